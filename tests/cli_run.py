"""Running the `retinaface` command in-process, for the CLI tests."""

from retinaface_ext import cli


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``retinaface *argv``; argparse's SystemExit counts."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err, *fragments):
    """Exit status 2 and one line on the terminal, holding each fragment (progress bars,
    which rewrite their line with carriage returns and clear it at the end, leave
    nothing)."""
    shown = [line.rsplit("\r", 1)[-1].strip() for line in err.split("\n")]
    assert code == 2 and len([line for line in shown if line]) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
