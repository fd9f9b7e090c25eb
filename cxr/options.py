"""Click options shared by several commands, defined once. Only CLI modules import this."""

from __future__ import annotations

import click

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

seed_option = click.option("--seed", type=int, default=None, show_default="from config / 42",
                           help="Random seed for splits, shuffling and augmentation.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar or chatter; errors still print.")
model_option = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=str), required=True,
                            help="Exported ONNX model (.onnx).")
batch_size_option = click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
                                 help="Images per onnxruntime call.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="onnxruntime execution provider.")
workers_option = click.option("--workers", type=click.IntRange(0, 256), default=None,
                              help="Decode worker processes (default: CPU count; 0 decodes in-process).")
target_recall_option = click.option("--target-recall", type=click.FloatRange(0.0, 1.0), default=0.95,
                                    show_default=True, help="Sensitivity the validation-chosen threshold aims for.")


def fail_usage(message: str) -> None:
    """Print a one-line usage error and exit 2."""
    click.echo(f"Error: {message}", err=True)
    raise SystemExit(EXIT_USAGE)
n_boot_option = click.option("--n-boot", type=click.IntRange(10), default=1000, show_default=True,
                             help="Bootstrap resamples (by patient) for the 95% CIs.")
