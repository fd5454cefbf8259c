"""onnxsparse.progress: a bar with elapsed time and ETA on a terminal's stderr, nothing elsewhere."""

import io
import sys

from onnxsparse import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_reporter_turns_step_lines_into_a_bar_with_eta(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress.Reporter("sensitivity") as say:
        say("capturing the inputs of 3 layer(s)")
        say("[1/3] fc1: output relative L2 0.0100")
        say("[2/3] fc2: output relative L2 0.0200")
    shown = screen.getvalue()
    assert "sensitivity" in shown and "2/3 [" in shown and "<" in shown and "fc2" in shown, shown


def test_nothing_when_not_a_terminal_or_quiet(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    with progress.Reporter("prune") as say:
        say("[1/2] fc1")
    with progress.steps(2, "verify") as bar:
        bar.update()
    with progress.working("compile"):
        pass
    assert pipe.getvalue() == ""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress.Reporter("prune", quiet=True) as say:
        say("[1/2] fc1")
    assert screen.getvalue() == ""


def test_sensitivity_shows_a_bar_on_a_terminal_and_nothing_in_a_pipe(monkeypatch, capsys):
    from models.build import BUNDLED_SAMPLE

    from onnxsparse import cli

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert cli.main(["sensitivity", str(BUNDLED_SAMPLE), "--calib-samples", "2", "--batch-size", "2"]) == 0
    shown = screen.getvalue()
    assert "onnxsparse sensitivity" in shown and "<" in shown, shown[-500:]  # [elapsed<remaining]
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert cli.main(["sensitivity", str(BUNDLED_SAMPLE), "--calib-samples", "2", "--batch-size", "2"]) == 0
    assert "[1/" not in pipe.getvalue() and "onnxsparse sensitivity: [" not in pipe.getvalue()
