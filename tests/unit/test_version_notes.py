"""Quarantined and refused versions in plain words: `doctor`, `status`, and the logviewer's pages.

The records are written by the classes that write them on a node: the model server's
:class:`modelserver.quarantine.Quarantine` and the agent's :class:`appliance.agent.state.StateFile`.
"""

from __future__ import annotations

import os
import re
import time

from appliance.agent.state import StateFile, state_path, version_notes
from appliance.config import load_config
from appliance.doctor import check_versions
from appliance.node import NodeStatus
from modelserver.quarantine import Quarantine, current, fingerprint
from tests.unit.test_logviewer_app import MODEL, Site, site, text  # noqa: F401 - site is a fixture


def _quarantine_123(site: Site) -> None:
    Quarantine(str(site.paths.quarantine), MODEL).add(
        123, "123", fingerprint(site.paths.models / MODEL / "123"), "DATA_LOSS",
        "Error parsing message with type 'tensorflow.SavedModel': Wire format was corrupt")


def _agent_refused_124(site: Site) -> None:
    state = StateFile(state_path(site.paths))
    state.doc["models"] = {MODEL: {"refused": {"124": "it is not a model: saved_model.pb is not a "
                                               "tensorflow.SavedModel protobuf"}}}
    state._write()


def test_notes_doctor_and_status_say_what_is_wrong(site: Site) -> None:
    _quarantine_123(site)
    _agent_refused_124(site)
    notes = version_notes(site.paths, site.paths.models, MODEL)
    assert re.fullmatch(r"quarantined since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: DATA_LOSS: Error parsing "
                        r"message with type 'tensorflow.SavedModel': Wire format was corrupt", notes[123])
    assert notes[124] == ("refused by the agent: it is not a model: saved_model.pb is not a "
                          "tensorflow.SavedModel protobuf")
    config = load_config(site.paths.etc / "appliance.yaml", ["s3.type=seaweedfs", "s3.endpoint=http://127.0.0.1:9",
                                                            "model.base.path=s3://models"])
    problems = [f for f in check_versions(site.paths, config) if not f.ok]
    assert [f.message for f in problems[:2]] == [f"model {MODEL} version 123: {notes[123]}",
                                                 f"model {MODEL} version 124: {notes[124]}"]
    # The site's version 0007 holds 3 bytes of garbage: not a model, said once, after the notes.
    assert len(problems) == 3 and problems[2].message.startswith(f"model {MODEL} version 0007 (")
    assert "push a fixed copy under the same number (`appliance models push DIR --name half_plus_two " \
           "--version 123`)" in problems[0].fix
    assert "fix version 124 of half_plus_two in the repository and push it again" in problems[1].fix
    status = NodeStatus(root="/", role="serving", models={MODEL: [
        {"version": "123", "state": "END", "error": "Wire format was corrupt", "note": notes[123]},
        {"version": "124", "state": "REFUSED", "error": "", "note": notes[124]}]})
    lines = status.text().splitlines()
    assert any(re.search(r"123  END  quarantined since .* UTC: DATA_LOSS: ", line) for line in lines)
    assert any(line.endswith("124  REFUSED  " + notes[124]) for line in lines)


def test_changed_files_end_the_quarantine_for_every_reader(site: Site) -> None:
    _quarantine_123(site)
    version = site.paths.models / MODEL / "123"
    assert list(current(site.paths.quarantine, MODEL, site.paths.models / MODEL)) == [123]
    later = time.time() + 5
    os.utime(version / "saved_model.pb", (later, later))
    assert current(site.paths.quarantine, MODEL, site.paths.models / MODEL) == {}
    assert version_notes(site.paths, site.paths.models, MODEL) == {}
    config = load_config(site.paths.etc / "appliance.yaml")
    # Out of quarantine; what the doctor still says of 123 is that its files are no model (the
    # site's stand-in SavedModel has no graph), as of the garbage 0007.
    messages = [f.message for f in check_versions(site.paths, config)]
    assert not any("quarantined" in m for m in messages)
    assert [m.split(" (")[0] for m in messages] == [f"model {MODEL} version 0007", f"model {MODEL} version 123"]


def test_the_logviewer_shows_a_quarantined_version(site: Site) -> None:
    _quarantine_123(site)
    site.login()
    listing = text(site.client.get("/models"))
    assert re.search(r'<span class="bad quarantined" title="quarantined since [^"]+ UTC: DATA_LOSS: Error '
                     r'parsing message[^"]*">123 quarantined</span>', listing)
    page = text(site.client.get(f"/models/{MODEL}"))
    row = page[page.index(f'href="/models/{MODEL}/123"'):].split("</tr>")[0]
    assert re.search(r'<span class="bad quarantined">quarantined since [^<]+ UTC: DATA_LOSS: Error parsing '
                     r"message with type &#39;tensorflow.SavedModel&#39;: Wire format was corrupt</span>", row), row
    version = text(site.client.get(f"/models/{MODEL}/123"))
    assert re.search(r'<p class="error quarantined">quarantined since [^<]+ UTC: DATA_LOSS: [^<]+ \(the model '
                     r"server loads it again when its files change", version), version
