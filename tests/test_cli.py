"""The ``featcheck`` command line: ``inspect``, ``compare`` and ``diff``, run as the user runs them.

Subprocess runs (``python -m featcheck``, with this checkout first on the path) cover what needs a
real process: exit statuses, what reaches the terminal and what does not, the gallery on disk.
The many kinds of bad input go through :func:`featcheck._cli.main` in this process (the same code
path, without paying a torch import per case); two of them also as a process.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import featcheck
from featcheck import _baselines, _cli
from featcheck._cli_load import CLIError, parse_args_pairs, parse_shape
from fixtures import defects

ROOT = Path(__file__).resolve().parents[1]

# A model in a local file that appends a line to ``log`` on every forward: proves that inspect
# runs exactly the forward passes it says (one, plus one per calibration batch), no hidden one.
COUNTING_MODEL = """
import torch
from torch import nn


class Counting(nn.Module):
    def __init__(self, log):
        super().__init__()
        self.log = log
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1, stride=2)

    def forward(self, x):
        with open(self.log, "a") as f:
            f.write("forward\\n")
        return self.head(self.act(self.bn(self.conv(x))))


def build(log):
    torch.manual_seed(0)
    return Counting(log)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, ids):
        assert ids.dtype == torch.int64 and int(ids.max()) < 50
        return self.proj(self.embed(ids))


def not_a_model():
    return 42
"""


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "featcheck", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=600
    )


def summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "counting.py"
    path.parent.mkdir()
    path.write_text(COUNTING_MODEL)
    return path


# -- subprocess runs ------------------------------------------------------------------------------


def test_inspect_resnet18_calibrated_passes_and_writes_the_gallery(tmp_path: Path) -> None:
    result = run_cli("inspect", "torchvision:resnet18", "--input", "4x3x64x64", "--calibrate", "4",
                     "--max-pictures", "6", "--out", "report", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # not a terminal: no progress line, no warning, nothing at all on stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("featcheck inspect torchvision:resnet18 (ResNet, random initialisation), 11.7M parameters\n")
    assert "input: 4x3x64x64 (normal, seed 0); BatchNorm calibrated on 4 random batches" in out
    assert "68 records (60 modules, 8 operations), 1 forward pass" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  layer")}
    assert rows["layer4.1.conv2"] == ["Conv2d", "4x512x2x2", "32"]
    assert rows["layer1.0.add"] == ["add()", "4x64x16x16", "4"]
    assert re.search(r"^  passed  dead channels: 68 layers$", out, re.M)
    assert re.search(r"^  skipped saturation: no layer with known output bounds", out, re.M)
    assert "report/index.html (6 pictures" in out
    data = summary(tmp_path / "report")
    sections = [t["nodeid"] for t in data["tests"]]
    assert sections[:3] == [f"torchvision:resnet18 :: check: {c}" for c in ("finite values", "dead channels", "saturation")]
    assert sections[3:] == [f"torchvision:resnet18 :: {g}" for g in ("conv1 ... maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool ... fc")]
    pictured = [p["name"] for t in data["tests"] for p in t["pictures"]]
    assert len(pictured) == 6 and pictured[0] == "conv1" and pictured[-1] == "fc"  # spread from first to last
    for t in data["tests"]:
        for p in t["pictures"]:
            assert (tmp_path / "report" / p["file"]).stat().st_size > 1000
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<h1>featcheck inspect torchvision:resnet18</h1>" in html and "(--max-pictures)" in html


def test_module_spec_that_fails_a_check_exits_1_naming_the_layer(tmp_path: Path) -> None:
    result = run_cli("inspect", "fixtures.defects:make", "--arg", "name=dead_relu", "--arg", "defective=True",
                     "--input", "8x3x32x32", "--out", "report", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    layer, channels = defects.DEFECTS["dead_relu"].layer, list(defects.DEFECTS["dead_relu"].channels)
    assert re.search(rf"^  {layer} +ReLU +8x8x8x8 +4 +dead 3/8$", result.stdout, re.M), result.stdout
    # the dead channels pass through Identity, the op `x + offset` and Log: flagged there too
    assert re.search(r"^  FAILED  dead channels: dead channels in 4 of 10 layers", result.stdout, re.M)
    assert f"\n            {layer}  <= 0% dead  3/8 dead (37.5%)  [1, 3, 6]  8\n" in result.stdout
    assert re.search(r"^  passed  saturation: 1 layer$", result.stdout, re.M)  # the Sigmoid, the one bounded layer
    data = summary(tmp_path / "report")
    failed = data["tests"][0]
    assert failed["nodeid"] == "fixtures.defects:make :: check: dead channels" and failed["outcome"] == "failed"
    assert failed["flagged"][0] == {"layer": layer, "channels": channels, "check": "dead"}
    assert [f["layer"] for f in failed["flagged"]] == [layer, "extra", "add", "log"]
    assert failed["pictures"][0]["name"] == layer and failed["pictures"][0]["kind"] == "flagged: dead"


def test_local_file_runs_exactly_the_forwards_it_says_and_opens_the_gallery(tmp_path: Path, model_file: Path) -> None:
    log = tmp_path / "forwards.log"
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys\nopen({str(opened)!r}, 'w').write(sys.argv[1])\n")
    result = run_cli(
        "inspect", f"{model_file}:build", "--arg", f"log={log}", "--input", "2x3x16x16", "--calibrate", "3",
        "--out", "gallery", "--open", cwd=tmp_path, env={"BROWSER": f"{sys.executable} {browser} %s"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text().splitlines() == ["forward"] * 4  # 3 calibration batches and 1 capture
    assert re.search(r"^  head +Conv2d +2x4x8x8 +2$", result.stdout, re.M), result.stdout
    assert opened.read_text() == (tmp_path / "gallery" / "index.html").resolve().as_uri()


def test_progress_shows_on_a_terminal_only(tmp_path: Path, model_file: Path) -> None:
    args = ["inspect", f"{model_file}:build", "--arg", f"log={tmp_path / 'log'}", "--input", "2x3x16x16", "--calibrate", "2"]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "featcheck", *args], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    text = seen.decode()
    for step in ("building", "calibrating BatchNorm: batch 2/2", "capturing", "rendering 1/"):
        assert step in text, text
    assert text.endswith("\r\x1b[K")  # the status line is cleared before the summary


def test_bad_usage_exits_2_with_one_line(tmp_path: Path) -> None:
    for args, expected in (
        (["inspect", "torchvision:resnet18", "--input", "2x3x224"], "failed on input 2x3x224"),
        (["inspect", "torchvision:resnet18", "--input", "1x3x8x8", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("featcheck: error: ")
        assert expected in result.stderr


def test_diff_of_two_baselines(tmp_path: Path) -> None:
    def baseline(model: torch.nn.Module, name: str) -> Path:
        cap = featcheck.capture(model, defects.batch(2), ops=False)
        layers = [_baselines.layer_entry(lc, stats=True) for lc in cap.values()]
        path = tmp_path / f"{name}.json"
        path.write_text(_baselines.dumps(_baselines.stored(_baselines.document(layers, name, None, stats=True))))
        return path

    before = baseline(defects.make("extra_pooling", False), "before")
    after = baseline(defects.make("extra_pooling", True), "after")
    result = run_cli("diff", str(before), str(after), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"featcheck diff: {before} (9 layers) -> {after} (9 layers)"
    assert lines[1] == "structure: 4 differences (0 added, 0 removed, 4 changed, 0 renamed)"
    assert "  ~ changed  extra (MaxPool2d): type Identity -> MaxPool2d, shape 8x8x8 -> 8x4x4, stride 4 -> 8" in lines
    assert "  ~ changed  gate (Sigmoid): shape 6x8x8 -> 6x4x4, stride 4 -> 8" in lines
    assert not any("update the baseline" in line for line in lines)
    same = run_cli("diff", str(before), str(before), cwd=tmp_path)
    assert same.returncode == 0 and same.stdout == f"featcheck diff: {before} and {before}: same architecture (9 layers)\n"



# A small CNN in a local file, and variants of it: a copy with one conv's output channel 3
# perturbed, one with a .detach() after its stem, one that takes grey images, token models whose
# embeddings differ in range. Every builder draws the same initial weights (the CLI seeds 0).
PAIR_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, detach=False):
        super().__init__()
        self.detach = detach
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        if self.detach:
            x = x.detach()
        return self.fc(self.pool(self.body(x)).flatten(1))


def healthy():
    return Net()


def detached():
    return Net(detach=True)


def perturbed():
    model = Net()
    with torch.no_grad():
        model.body[0].weight[3] += 0.5
    return model


class Renamed(Net):
    def __init__(self):
        super().__init__()
        self.trunk = self.body
        del self.body

    def forward(self, x):
        return self.fc(self.pool(self.trunk(self.stem(x))).flatten(1))


def renamed():
    return Renamed()


def grey():
    model = Net()
    model.stem[0] = nn.Conv2d(1, 8, 3, padding=1)
    return model


class Tokens(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, ids):
        return self.proj(self.embed(ids))


def tokens50():
    return Tokens(50)


def tokens30():
    return Tokens(30)
"""


@pytest.fixture
def pair_file(tmp_path: Path) -> Path:
    path = tmp_path / "pair.py"
    path.write_text(PAIR_MODEL)
    return path


def test_compare_with_a_perturbed_copy_names_the_layer_and_draws_it(tmp_path: Path, pair_file: Path) -> None:
    result = run_cli("compare", "pair.py:healthy", "pair.py:perturbed", "--input", "4x3x16x16", "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("featcheck compare pair.py:healthy (Net) -> pair.py:perturbed (Net)\n")
    assert "7 pairs of records compared, 4 diverging; 0 only in pair.py:healthy, 0 only in pair.py:perturbed" in out
    assert "first diverging: body.0; its inputs agreed: the difference starts inside it" in out
    # the failure table: the conv whose channel 3 changed, then what it feeds, inputs diverged
    assert re.search(r"^body\.0 +=.* no +\[3\]$", out, re.M), out
    assert re.search(r"^body\.1 +=.* yes +\[3\]$", out, re.M), out
    data = summary(tmp_path / "cmp")
    (section,) = data["tests"]
    assert section["nodeid"] == "pair.py:healthy vs pair.py:perturbed :: comparison" and section["outcome"] == "failed"
    assert section["flagged"][0] == {"layer": "body.0", "channels": [3], "check": "diverges"}
    assert [f["layer"] for f in section["flagged"]] == ["body.0", "body.1", "pool", "fc"]
    first = section["pictures"][0]
    assert first["name"] == "body.0" and first["kind"] == "flagged: diverges"
    assert dict(first["table"])["inputs diverged"] == "no"
    picture = Image.open(tmp_path / "cmp" / first["file"])
    assert picture.width > 3 * picture.height / 2  # reference | candidate | difference, side by side


def test_compare_of_a_model_with_itself_passes(tmp_path: Path, pair_file: Path) -> None:
    result = run_cli("compare", "pair.py:healthy", "pair.py:healthy", "--input", "4x3x16x16", "--calibrate", "2",
                     "--out", "same", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "7 pairs of records compared, 0 diverging" in result.stdout
    assert "pair.py:healthy computes the same as pair.py:healthy: 7 compared records agree" in result.stdout
    (section,) = summary(tmp_path / "same")["tests"]
    assert section["outcome"] == "passed" and section["flagged"] == [] and section["pictures"] == []


def test_compare_bad_mapping_exits_2_with_one_line(tmp_path: Path, pair_file: Path) -> None:
    result = run_cli("compare", "pair.py:healthy", "pair.py:perturbed", "--input", "4x3x16x16",
                     "--mapping", "body.0", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("featcheck: error: --mapping must be OLD=NEW, a record of SPEC_A and its counterpart in "
                             "SPEC_B (layer3.conv=blocks.2.conv), got 'body.0'\n")
    assert not (tmp_path / "featcheck-report").exists()


def test_inspect_backward_names_the_parameters_a_detach_cuts_off(tmp_path: Path, pair_file: Path) -> None:
    result = run_cli("inspect", "pair.py:detached", "--input", "4x3x16x16", "--backward", "--out", "det", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "7 records (7 modules, 0 operations), 1 forward pass, 1 backward pass of out.logsumexp(-1).mean()" in out
    assert re.search(r"^  stem\.0 +Conv2d +4x8x16x16 +1 +none$", out, re.M), out  # no gradient reaches it
    assert re.search(r"^  body\.0 +Conv2d +4x8x16x16 +1 +\d\.\d\de-\d\d$", out, re.M), out
    assert re.search(r"^  FAILED  parameters receive gradients: 4 of 8 parameters got no non-zero gradient", out, re.M)
    table = out.split("parameters receive gradients:", 1)[1]
    assert re.search(r"stem\.0 +weight +a non-zero gradient +no gradient \(None\)", table)
    assert re.search(r"stem\.1 +weight +a non-zero gradient +no gradient \(None\)", table)
    assert "body.0" not in table.split("Usual causes")[0] and "fc " not in table.split("Usual causes")[0]
    assert re.search(r"^  passed  gradients finite: 4 layers and 8 parameters$", out, re.M)
    sections = {t["nodeid"].split(" :: ")[1]: t for t in summary(tmp_path / "det")["tests"]}
    failed = sections["check: parameters receive gradients"]
    assert failed["outcome"] == "failed" and any("stem.0  weight" in n for n in failed["notes"])
    # the gradient-flow picture goes with the gradient check that failed
    assert [p["kind"] for p in failed["pictures"]] == ["gradient flow"]


def test_inspect_backward_of_a_healthy_model_passes_with_a_gradient_flow_picture(tmp_path: Path, pair_file: Path) -> None:
    result = run_cli("inspect", "pair.py:healthy", "--input", "4x3x16x16", "--backward", "--out", "ok", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("gradients finite: 7 layers and 8 parameters",
                  "gradient flow: 7 layers within [1e-4, 1e4] times the gradient at the loss end",
                  "parameters receive gradients: 8 parameters"):
        assert f"  passed  {check}\n" in result.stdout, result.stdout
    sections = {t["nodeid"].split(" :: ")[1]: t for t in summary(tmp_path / "ok")["tests"]}
    (flow,) = sections["check: gradient flow"]["pictures"]
    assert flow["kind"] == "gradient flow" and flow["name"] == "Net"
    picture = Image.open(tmp_path / "ok" / flow["file"])
    assert picture.width >= 400 and picture.height >= 300

# -- in-process: the same main() ---------------------------------------------------------------------


def main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = _cli.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_diff_of_a_baseline_and_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cap = featcheck.capture(defects.make("stride_1", False), defects.batch(2))
    doc = _baselines.document([_baselines.layer_entry(lc, stats=False) for lc in cap.values()], "t", None, False, ops=True)
    (tmp_path / "b.json").write_text(_baselines.dumps(doc))
    spec = ["fixtures.defects:make", "--arg", "name=stride_1", "--input", "2x3x32x32"]
    status, out, err = main(capsys, "diff", "b.json", *spec, "--arg", "defective=False")
    assert (status, err) == (0, "") and out == "featcheck diff: b.json and fixtures.defects:make: same architecture (10 layers)\n"
    status, out, err = main(capsys, "diff", "b.json", *spec, "--arg", "defective=True")
    assert status == 1 and err == ""
    assert "  ~ changed  conv2 (Conv2d): shape 8x8x8 -> 8x16x16, stride 4 -> 2" in out.splitlines()


def test_inputs_images_tensor_file_tokens_weights_and_pickles(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = f"log={tmp_path / 'log'}"
    for i, size in enumerate([(40, 30), (30, 50)]):
        Image.new("RGB", size, (40 * i, 120, 200)).save(tmp_path / f"im{i}.png")
    status, out, err = main(capsys, "inspect", f"{model_file}:build", "--arg", log, "--image", "im0.png", "im1.png",
                            "--image-size", "24", "--out", "a")
    assert (status, err) == (0, "")
    assert "input: 2x3x24x24 from im0.png, im1.png (ImageNet-normalised)" in out

    torch.save(torch.randn(3, 3, 10, 10), tmp_path / "batch.pt")
    status, out, err = main(capsys, "inspect", f"{model_file}:build", "--arg", log, "--input", "batch.pt", "--out", "b")
    assert (status, err) == (0, "") and "input: 3x3x10x10 torch.float32 from batch.pt" in out
    assert re.search(r"^  head +Conv2d +3x4x5x5 +2$", out, re.M), out

    status, out, err = main(capsys, "inspect", f"{model_file}:Tokens", "--tokens", "3x7", "--out", "c")
    assert (status, err) == (0, "") and "input: 3x7 random token ids in [0, 50) (seed 0)" in out
    assert re.search(r"^  proj +Linear +3x7x8 +-$", out, re.M), out

    model = defects.make("zeroed_filters", True)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    spec = ["fixtures.defects:make", "--arg", "name=zeroed_filters", "--arg", "defective=False", "--input", "4x3x32x32"]
    status, out, err = main(capsys, "inspect", *spec, "--out", "d")
    assert status == 0, out
    status, out, err = main(capsys, "inspect", *spec, "--weights", "weights.pt", "--out", "e")
    assert status == 1 and "(ZooNet, weights from weights.pt)" in out.splitlines()[0]
    assert re.search(r"^  conv2 +Conv2d .* dead 2/8$", out, re.M)

    torch.save(model, tmp_path / "whole.pt")
    status, out, err = main(capsys, "inspect", "whole.pt", "--input", "4x3x32x32", "--out", "f")
    assert status == 2 and "--trust-pickle" in err and "unpickling runs whatever code" in err
    status, out, err = main(capsys, "inspect", "whole.pt", "--trust-pickle", "--input", "4x3x32x32", "--out", "f")
    assert status == 1 and out.startswith("featcheck inspect whole.pt (ZooNet, unpickled with --trust-pickle)")


def test_every_kind_of_bad_input_is_one_line(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"a": 1}, tmp_path / "dict.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    torch.save(torch.zeros(0, 3), tmp_path / "empty.pt")
    keys = ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
            "bn.num_batches_tracked", "head.weight", "head.bias"]
    torch.save({k: torch.zeros(1) for k in keys}, tmp_path / "shapes.pt")
    torch.save(defects.make("dead_relu", False), tmp_path / "whole.pt")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "bad.json").write_text('{"featcheck_baseline": 99}')
    (tmp_path / "taken").write_text("a file")
    counting = [f"{model_file}:build", "--arg", f"log={tmp_path / 'log'}"]
    cases = [
        (["inspect", "torchvision:resnet81", "--input", "1x3x8x8"], "torchvision has no model 'resnet81'; did you mean resnet18"),
        (["inspect", "torchvision:resnet18", "--arg", "weights=DEFAULT", "--input", "1x3x8x8"], "never downloads weights"),
        (["inspect", "torchvision:resnet18", "--arg", "depth=3", "--input", "1x3x8x8"], "building torchvision:resnet18 with depth=3 failed: TypeError"),
        (["inspect", "timm:resnet18", "--input", "1x3x8x8"], "timm:resnet18 needs timm, which is not installed here: pip install timm"),
        (["inspect", "no_such_pkg.models:build", "--input", "1x3x8x8"], "no module named 'no_such_pkg.models'"),
        (["inspect", "missing.py:build", "--input", "1x3x8x8"], "no Python file at missing.py"),
        (["inspect", f"{model_file}:biuld", "--input", "1x3x8x8"], "has no attribute 'biuld'; did you mean build"),
        (["inspect", f"{model_file}:not_a_model", "--input", "1x3x8x8"], "returned a int, not a torch.nn.Module"),
        (["inspect", "resnet18", "--input", "1x3x8x8"], "SPEC must be torchvision:NAME"),
        (["inspect", "dict.pt", "--trust-pickle", "--input", "1x3x8x8"], "holds a dict, not a torch.nn.Module (a state dict"),
        (["inspect", *counting, "--input", "2x3xa"], "--input must be sizes joined by 'x'"),
        (["inspect", *counting, "--input", "2x3x8"], "failed on input 2x3x8: RuntimeError"),
        (["inspect", *counting], "give the model one input"),
        (["inspect", *counting, "--input", "1x3x8x8", "--tokens", "4"], "found --input and --tokens"),
        (["inspect", *counting, "--input", "nothing.pt"], "--input: no file at nothing.pt"),
        (["inspect", *counting, "--input", "dict.pt"], "--input dict.pt holds a dict, not a tensor"),
        (["inspect", *counting, "--input", "empty.pt"], "holds an empty tensor of shape (0, 3)"),
        (["inspect", *counting, "--image", "gone.jpg"], "--image: no image file at gone.jpg"),
        (["inspect", *counting, "--image", "notes.txt"], "is not an image file Pillow can read"),
        (["inspect", *counting, "--tokens", "8"], "--tokens needs an nn.Embedding in Counting"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "none.pt"], "--weights: no file at none.pt"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "partial.pt"], "does not fit Counting: 8 missing keys (bn.bias, bn.num_batches_tracked, bn.running_mean, ...)"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "shapes.pt"], "does not fit Counting: size mismatch for conv.weight"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "dict.pt"], "--weights dict.pt holds a dict, not a state dict (a dict of tensors)"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "whole.pt"], "a pickled whole model is SPEC with --trust-pickle"),
        (["inspect", *counting, "--input", "1x3x8x8", "--layers", "cnov"], "--layers: layer 'cnov' matches nothing"),
        (["inspect", *counting, "--input", "1x3x8x8", "--calibrate", "0"], "argument --calibrate: expected a positive integer, got '0'"),
        (["inspect", *counting, "--input", "1x3x8x8", "--arg", "x"], "--arg must be key=value"),
        (["inspect", *counting, "--input", "1x3x8x8", "--out", "taken"], "--out taken is a file, not a folder; point --out at a folder"),
        (["diff", "bad.json", "bad.json"], "baseline bad.json has format version 99"),
        (["diff", "nothing.json", "bad.json"], "no baseline file at nothing.json"),
        ([], "the following arguments are required: COMMAND"),
    ]
    for args, expected in cases:
        status, out, err = main(capsys, *args)
        assert status == 2, (args, out, err)
        assert out == "" and err.startswith("featcheck: error: ") and err.count("\n") == 1, (args, err)
        assert expected in err, (args, err)
    assert not (tmp_path / "featcheck-report").exists()  # nothing was written for a failed start



def test_inputs_too_big_to_allocate_zero_sizes_and_files_not_from_torch_save_are_one_line(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello world")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "blank.pt").write_bytes(b"")
    torch.save(defects.make("dead_relu", False), tmp_path / "whole.pt")
    counting = [f"{model_file}:build", "--arg", f"log={tmp_path / 'log'}"]
    tokens = [f"{model_file}:Tokens"]
    cases = [
        # 1 EiB: no machine's allocator gives it (torch's RuntimeError from inside its allocator)
        (["inspect", *counting, "--input", "1024x1024x1024x1024x1024x256"],
         "--input 1024x1024x1024x1024x1024x256 is 288,230,376,151,711,744 values of float32, "
         "1,152,921,504,606,846,976 bytes (1.07e+09 GiB): more memory than this machine can give; give a smaller shape"),
        # more bytes than torch can count
        (["inspect", *counting, "--input", "99999999999x99999999999x99999999999"], "more memory than this machine can give"),
        (["inspect", *tokens, "--tokens", "268435456x268435456"],
         "--tokens 268435456x268435456 is 72,057,594,037,927,936 values of int64, 576,460,752,303,423,488 bytes"),
        (["inspect", *counting, "--input", "0x3x8x8"], "--input 0x3x8x8 has a size of 0 (size 1 of 4): such an input holds no values"),
        (["inspect", *tokens, "--tokens", "0"], "--tokens 0 has a size of 0: such an input holds no values for the model to run on; "
                                                 "give every size as 1 or more, such as 16 or 2x16"),
        (["inspect", *tokens, "--tokens", "4xa"], "--tokens must be LENGTH or BATCHxLENGTH such as 16 or 2x16, got '4xa'"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "notes.txt"],
         "--weights notes.txt is text (starting 'hello world'), not a file written by torch.save (a state dict of tensors"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "photo.jpg"], "--weights photo.jpg is a JPEG image, not a file written by torch.save"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "blank.pt"], "--weights blank.pt is an empty file (0 bytes), not a file written"),
        (["inspect", *counting, "--input", "1x3x8x8", "--weights", "whole.pt"],
         "it holds something other than tensors and plain containers (Unsupported global: GLOBAL fixtures.defects."),
        (["inspect", *counting, "--input", "photo.jpg"], "--input photo.jpg is a JPEG image, not a file written by torch.save (a tensor "
                                                          "saved with torch.save is expected; images go to --image)"),
    ]
    for args, expected in cases:
        status, out, err = main(capsys, *args)
        assert status == 2, (args, out, err)
        assert out == "" and err.startswith("featcheck: error: ") and err.count("\n") == 1, (args, err)
        assert expected in err, (args, err)
        assert "2x3x224x224" not in err or "--input" in args, err  # --tokens gets advice of its own
    assert not (tmp_path / "featcheck-report").exists()


def test_compare_bad_usage_is_one_line(
    tmp_path: Path, pair_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pair = ["pair.py:healthy", "pair.py:perturbed", "--input", "2x3x8x8"]
    cases = [
        ([*pair, "--mapping", "body.0=body.0", "--mapping", "body.0=fc"], "--mapping body.0 is given twice"),
        ([*pair, "--mapping", "=fc"], "--mapping must be OLD=NEW"),
        # a module path that is not there fails before the models run; an operation-like name after
        ([*pair, "--mapping", "bdoy.0=body.0"], "--mapping bdoy.0=body.0: pair.py:healthy has no record 'bdoy.0'; did you mean body.0"),
        ([*pair, "--mapping", "body.0=body.9"], "pair.py:perturbed has no record 'body.9' among the records compared"),
        ([*pair, "--rtol", "nan"], "argument --rtol: expected a finite number >= 0"),
        ([*pair, "--backward"], "unrecognized arguments: --backward"),
        ([*pair, "--layers", "bodi*"], "--layers: pattern 'bodi*' matches nothing"),
        (["pair.py:healthy", "pair.py:grey", "--input", "2x3x8x8"], "pair.py:grey failed on input 2x3x8x8: RuntimeError"),
        (["pair.py:grey", "pair.py:healthy", "--input", "2x3x8x8"], "pair.py:grey failed on input 2x3x8x8: RuntimeError"),
        (["pair.py:tokens50", "pair.py:tokens30", "--tokens", "6"],
         "the two models take different inputs: pair.py:tokens50: 2x6 random token ids in [0, 50) (seed 0); "
         "pair.py:tokens30: 2x6 random token ids in [0, 30) (seed 0); give both the same batch with --input ids.pt"),
        (["pair.py:healthy", "--input", "2x3x8x8"], "the following arguments are required: SPEC_B"),
    ]
    for args, expected in cases:
        status, out, err = main(capsys, "compare", *args)
        assert status == 2, (args, out, err)
        assert out == "" and err.startswith("featcheck: error: ") and err.count("\n") == 1, (args, err)
        assert expected in err, (args, err)
    assert not (tmp_path / "featcheck-report").exists()


def test_compare_with_a_mapping_pairs_renamed_records(
    tmp_path: Path, pair_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["compare", "pair.py:healthy", "pair.py:renamed", "--input", "2x3x8x8", "--no-ops"]
    status, out, err = main(capsys, *args, "--mapping", "body.0=trunk.0", "--mapping", "body.1=trunk.1", "--out", "a")
    assert (status, err) == (0, "") and "7 pairs of records compared, 0 diverging; 0 only in" in out, out
    # the mapping is what pairs them: body.0 (a conv) against trunk.1 (the ReLU after it) differs
    status, out, err = main(capsys, *args, "--mapping", "body.0=trunk.1", "--out", "b")
    assert (status, err) == (1, ""), err
    assert re.search(r"^body\.0 +trunk\.1 .* yes +\[", out, re.M), out  # its input is trunk.0's output



def test_inspect_backward_runs_one_forward_and_differentiates_a_feature_map(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "forwards.log"
    status, out, err = main(capsys, "inspect", f"{model_file}:build", "--arg", f"log={log}", "--input", "2x3x8x8",
                            "--backward", "--out", "g")
    assert (status, err) == (0, ""), out
    assert log.read_text().splitlines() == ["forward"]  # the backward pass reuses the capture's graph
    # a [2, 4, 4, 4] output is no classifier's: its loss is the mean square
    assert "1 forward pass, 1 backward pass of out.float().pow(2).mean()" in out

def test_default_loss_of_backward() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 10, requires_grad=True)
    loss = _cli._DefaultLoss()
    assert torch.equal(loss(logits), logits.logsumexp(-1).mean()) and loss.used == "out.logsumexp(-1).mean()"
    maps = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert torch.equal(loss(maps), maps.pow(2).mean()) and loss.used == "out.float().pow(2).mean()"
    column = torch.randn(4, 1, requires_grad=True)  # one output per sample: not a classifier
    assert torch.equal(loss(column), column.pow(2).mean())
    assert torch.equal(loss({"ids": torch.arange(3), "logits": logits}), logits.logsumexp(-1).mean())
    assert loss.used == "out.logsumexp(-1).mean() (out: the output's first floating-point tensor)"
    with pytest.raises(CLIError, match="holds no floating-point tensor"):
        loss((torch.arange(3),))
    with pytest.raises(CLIError, match="depends on no parameter that requires grad"):
        loss(torch.randn(4, 10))


def test_parse_mapping() -> None:
    assert _cli._parse_mapping(["a.b=c.d", "layer1.0.add=blocks.0.add"]) == {"a.b": "c.d", "layer1.0.add": "blocks.0.add"}
    for bad in ("a", "a=", "=b", "a=b=c"):
        with pytest.raises(CLIError, match="--mapping must be OLD=NEW"):
            _cli._parse_mapping([bad])

def test_console_script_is_main(tmp_path: Path) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    target = re.search(r'^featcheck\s*=\s*"([\w.]+):(\w+)"', section, re.M)
    assert target is not None, section
    module = __import__(target.group(1), fromlist=[target.group(2)])
    assert getattr(module, target.group(2)) is _cli.main
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and all(c in result.stdout for c in ("inspect", "compare", "diff"))


# -- pure logic ---------------------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_shape("2x3X224x224", "--input") == (2, 3, 224, 224)
    for bad in ("", "2x", "2x-3", "two"):
        with pytest.raises(CLIError, match="sizes joined by 'x'"):
            parse_shape(bad, "--input")
    with pytest.raises(CLIError, match=r"--input 2x0x3 has a size of 0 \(size 2 of 3\)"):
        parse_shape("2x0x3", "--input")
    assert parse_args_pairs(["n=10", "p=0.5", "flag=True", "t=(1, 2)", "s=hello", "e="]) == {
        "n": 10, "p": 0.5, "flag": True, "t": (1, 2), "s": "hello", "e": ""}
    with pytest.raises(CLIError, match="given twice"):
        parse_args_pairs(["n=1", "n=2"])


def test_spread_keeps_first_and_last() -> None:
    names = [f"l{i}" for i in range(10)]
    assert _cli._spread(names, 4) == ["l0", "l3", "l6", "l9"]
    assert _cli._spread(names, 1) == ["l0"] and _cli._spread(names, 0) == []
    assert _cli._spread(names, 20) == names


def test_groups_follow_top_level_modules() -> None:
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    cap = featcheck.capture(model, torch.randn(1, 3, 32, 32))
    groups = _cli._groups(cap.names, cap)
    assert [title for title, _ in groups] == ["conv1 ... maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool ... fc"]
    assert [n for _, members in groups for n in members] == cap.names
