# The appliance VM image: Debian 12 (Python 3.11, what the appliance needs) + scripts/install-node.sh.
#
# Two builders, one provisioning (provision.sh): qemu (a qcow2 for private clouds: OpenStack,
# Proxmox, libvirt) and amazon-ebs (an AMI). Both run the install script bare-metal users run,
# then seal the machine so that every instance boots fresh: cloud-init runs again (new SSH host
# keys), a new machine-id, no authorized key of the build; `appliance bootstrap` turns the
# instance's user data into /etc/appliance/appliance.yaml and generates the credentials it
# lacks. Nothing secret is baked in: no config, no key, no password. A failing step fails the
# build. tests/integration/test_packer.py runs the provisioner blocks of this file with packer's
# null builder over SSH for every combination of the with_* options.
#
# Build with packer/build.sh (it prepares the source tarball, the throw-away build SSH key and
# the cloud-init seed the qemu builder boots with). No `required_plugins`: packer 1.6 has both
# builders built in, and a plugin block would make `packer init` download them.

variable "version" {
  type        = string
  default     = "0.1.0"
  description = "Image version, part of the image name."
}

variable "image_name" {
  type    = string
  default = "inference-engine-appliance"
}

variable "source_tarball" {
  type        = string
  description = "The appliance source (packer/build.sh makes it with `git archive HEAD`)."
}

variable "with_builtin_models" {
  type        = bool
  default     = true
  description = "Build the built-in models into /data/models, so a fresh instance answers the user guide's request."
}

variable "with_minio" {
  type        = bool
  default     = false
  description = "Install the real MinIO server binary (sha256 pinned in scripts/install-node.sh)."
}

variable "with_tensorflow_model_server" {
  type        = bool
  default     = false
  description = "Install the real tensorflow_model_server; needs tensorflow_model_server_sha256."
}

variable "tensorflow_model_server_sha256" {
  type        = string
  default     = ""
  description = "sha256 of the tensorflow-model-server .deb you verified (see scripts/install-node.sh)."
}

# ------------------------------------------------------------------------- qemu (private clouds)

# The base image is pinned: a dated Debian release (its directory never changes) and the sha512
# of its qcow2 from that release's SHA512SUMS. Move both together (see packer/README.md).
variable "base_image_url" {
  type        = string
  default     = "https://cloud.debian.org/images/cloud/bookworm/20241004-1890/debian-12-genericcloud-amd64-20241004-1890.qcow2"
  description = "The base cloud image (qcow2) the qemu build starts from: a dated release, not latest/."
}

variable "base_image_checksum" {
  type        = string
  default     = "sha512:da84d609d7ec5645dae1df503ea72037b2a831401d1b42ce2e7ec2a840b699f07ca8aea630853a3d5430839268c2bd337be45d89498264c36a9b5e12872c59ee"
  description = "Its checksum, type:value (the line of the release's SHA512SUMS for base_image_url)."
}

variable "qemu_accelerator" {
  type    = string
  default = "kvm"
}

variable "qemu_cpu" {
  type        = string
  default     = "host"
  description = "qemu -cpu model of the build VM: TensorFlow needs AVX to build the built-in models. host with kvm; max with tcg (qemu >= 7.2 emulates AVX)."
}

variable "disk_size" {
  type    = string
  default = "20G"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 4096
}

variable "ssh_username" {
  type        = string
  default     = "debian"
  description = "The base image's default user (Debian cloud images: debian)."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private half of the throw-away build key whose public half is in seed_dir/user-data."
}

variable "seed_dir" {
  type        = string
  description = "cloud-init NoCloud seed (meta-data, user-data) attached to the qemu build VM."
}

variable "output_directory" {
  type    = string
  default = "output-qemu"
}

# ------------------------------------------------------------------------- amazon-ebs (public cloud)

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "aws_instance_type" {
  type    = string
  default = "t3.large"
}

variable "aws_source_ami_name" {
  type        = string
  default     = "debian-12-amd64-20241004-1890"
  description = "Name of the base AMI: pinned to the same Debian release as base_image_url (a pattern like debian-12-amd64-* takes the newest match)."
}

variable "aws_source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Account that publishes the base AMI (Debian's official account)."
}

variable "aws_ssh_username" {
  type    = string
  default = "admin"
}

variable "install_root" {
  type        = string
  default     = ""
  description = "Root prefix the provisioning installs into and seals on the build machine; empty for / (an image). tests/integration/test_packer.py points it at a temp dir."
}

locals {
  stamp = regex_replace(timestamp(), "[- TZ:]", "")
}

source "qemu" "appliance" {
  iso_url              = var.base_image_url
  iso_checksum         = var.base_image_checksum
  disk_image           = true
  disk_size            = var.disk_size
  format               = "qcow2"
  accelerator          = var.qemu_accelerator
  qemuargs             = [["-cpu", var.qemu_cpu]]
  cpus                 = var.cpus
  memory               = var.memory
  headless             = true
  net_device           = "virtio-net"
  disk_interface       = "virtio"
  cd_files             = ["${var.seed_dir}/meta-data", "${var.seed_dir}/user-data"]
  cd_label             = "cidata"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  shutdown_command     = "sudo shutdown -P now"
  output_directory     = var.output_directory
  vm_name              = "${var.image_name}-${var.version}.qcow2"
}

source "amazon-ebs" "appliance" {
  region        = var.aws_region
  instance_type = var.aws_instance_type
  ami_name      = "${var.image_name}-${var.version}-${local.stamp}"
  ssh_username  = var.aws_ssh_username

  source_ami_filter {
    filters = {
      name                = var.aws_source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_source_ami_owner]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 20
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name    = var.image_name
    Version = var.version
  }
}

build {
  sources = ["source.qemu.appliance", "source.amazon-ebs.appliance"]

  provisioner "file" {
    source      = var.source_tarball
    destination = "${var.install_root}/tmp/appliance-src.tar.gz"
  }

  # The same install bare-metal users run, then a clean slate for the first boot of every
  # instance (packer/provision.sh: cloud-init state, machine-id, authorized_keys, SSH host keys,
  # the source). The options travel as one-word environment variables and the script builds the
  # install command itself, so no quoting can split it; the script stops at the first failing
  # step and packer fails the build on its exit code.
  provisioner "shell" {
    script = "${path.root}/provision.sh"
    environment_vars = [
      "SOURCE_TARBALL=${var.install_root}/tmp/appliance-src.tar.gz",
      "INSTALL_ROOT=${var.install_root}",
      "WITH_BUILTIN_MODELS=${var.with_builtin_models}",
      "WITH_MINIO=${var.with_minio}",
      "WITH_TENSORFLOW_MODEL_SERVER=${var.with_tensorflow_model_server}",
      "TENSORFLOW_MODEL_SERVER_SHA256=${var.tensorflow_model_server_sha256}",
    ]
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
  }
}
