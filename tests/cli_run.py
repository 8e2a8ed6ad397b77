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
