"""The run record from axolotl's own output: metrics parsed from the log, report.html."""

from __future__ import annotations

import base64
import json
import re

from appliance.train.metrics import Metrics, parse_line
from appliance.train.report import write_report

# Lines as axolotl 0.19 prints them: tqdm redraws (carriage returns) and one dict a step.
LOG = (
    " 33%|###3      | 1/3 [00:00<00:01,  1.29it/s]"
    "                                             {'loss': '6.236', 'grad_norm': '0.6353', "
    "'learning_rate': '0.001', 'ppl': '510.9', 'memory/max_allocated (GiB)': '0', "
    "'tokens/trainable': 35, 'tokens/total': 384, 'epoch': '0.05556'}\r"
    " 67%|######6   | 2/3 [00:00<00:00,  1.29it/s]{'loss': '6.209', 'grad_norm': '0.6233', "
    "'tokens/train_per_sec_per_gpu': '2344', 'epoch': '0.1111'}\n"
    "{'eval_loss': '6.243', 'eval_runtime': '0.3533', 'epoch': 0}\n"
    "[2026-11-27 02:29:31,001] [INFO] [axolotl.train] {'not': 'metrics'}\n"
    "100%|##########| 3/3 {'train_runtime': '0.8389', 'train_loss': '6.224', 'epoch': '0.1667'}\n"
)


def feed(text: str) -> Metrics:
    m = Metrics()
    for line in re.split(r"[\r\n]", text):
        m.feed(line)
    return m


def test_losses_are_read_from_axolotl_lines():
    m = feed(LOG)
    assert m.curve() == [(1, 6.236), (2, 6.209)]
    assert m.eval_loss == 6.243
    assert m.train_loss == 6.224  # the trainer's own summary wins over the last step
    assert m.tokens_per_second() == 2344.0
    assert parse_line("{'not': 'metrics'}") == []
    assert parse_line("{'loss': oops}") == []


def test_metrics_round_trip(tmp_path):
    m = feed(LOG)
    m.write(tmp_path / "metrics.jsonl")
    back = Metrics.read(tmp_path / "metrics.jsonl")
    assert back.records == json.loads(json.dumps(m.records))
    assert Metrics.read(tmp_path / "missing.jsonl").records == []


def test_report_embeds_the_loss_curve_and_escapes_provenance(tmp_path):
    prov = {"adapter": "a@0.1.0", "datasets": [{"name": "<script>x</script>", "sha256": "ab" * 32}]}
    path = write_report(tmp_path, prov, feed(LOG), "base_model: /x\n")
    html = path.read_text()
    png = re.search(r'src="data:image/png;base64,([^"]+)"', html)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "ab" * 32 in html and "a@0.1.0" in html
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_report_without_losses_says_so(tmp_path):
    html = write_report(tmp_path, {}, Metrics(), "").read_text()
    assert "No loss was logged" in html and "data:image/png" not in html
