"""Click options shared by several commands, defined once (pip-tools style)."""

from __future__ import annotations

import click

seed_option = click.option(
    "--seed",
    type=int,
    default=None,
    show_default="from config / 42",
    help="Random seed for splits, shuffling and augmentation.",
)
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, help="No progress bar or chatter; errors still print."
)
model_option = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=str),
    required=True,
    help="Exported ONNX model (.onnx).",
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=None,
    help="Images per onnxruntime call [default: 32 on CPU, 256 on CUDA].",
)
device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="onnxruntime execution provider.",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(["fp32", "tf32"]),
    default="fp32",
    show_default=True,
    help="CUDA math: fp32 matches the CPU to ~1e-5; tf32 is faster and can differ by "
    "about 1e-2 (enough to flip a label near the threshold).",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(0, 256),
    default=None,
    help="Worker processes (default and maximum: the CPU count). On CPUs each "
    "decodes and scores its own batches; with a GPU they decode. 0: all in-process.",
)
target_recall_option = click.option(
    "--target-recall",
    type=click.FloatRange(0.0, 1.0),
    default=0.95,
    show_default=True,
    help="Sensitivity the validation-chosen threshold aims for.",
)


n_boot_option = click.option(
    "--n-boot",
    type=click.IntRange(10),
    default=1000,
    show_default=True,
    help="Bootstrap resamples (by patient) for the 95% CIs.",
)
threshold_rule_option = click.option(
    "--threshold-rule",
    type=click.Choice(["wilson", "point"]),
    default="wilson",
    show_default=True,
    help="Validation threshold: wilson = the 95% Wilson lower bound of validation recall reaches the target "
    "(a margin for new patients); point = the point estimate reaches it.",
)

engine_option = click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process and a decode pool; ray: Ray Data on a local or remote "
    "Ray cluster (pip install 'cxr[ray]'), same outputs.",
)
ray_address_option = click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="With --engine ray: the cluster to join (e.g. ray://head:10001 or auto); "
    "default: a running instance, else a new local one.",
)
gpus_per_actor_option = click.option(
    "--gpus-per-actor",
    type=click.FloatRange(0.01, 64),
    default=None,
    help="With --engine ray on GPUs: GPUs per scoring actor [default: 1; 0.5 puts two actors on each GPU].",
)


ray_timeout_option = click.option(
    "--ray-timeout",
    type=click.FloatRange(1, 3600),
    default=None,
    show_default="60",
    help="With --engine ray and --ray-address HOST:PORT: seconds to wait for the "
    "cluster to answer before giving up (exit 69).",
)


def engine_options(command):
    """--engine, --ray-address, --ray-timeout and --gpus-per-actor, for the commands that score."""
    return engine_option(ray_address_option(ray_timeout_option(gpus_per_actor_option(command))))


foreign_option = click.option(
    "--foreign",
    type=click.Choice(["flag", "skip"]),
    default="flag",
    show_default=True,
    help="An image the model's domain guard puts outside its training domain: flag = score it and give the "
    "reason in 'qc'; skip = give the reason and leave its probability empty.",
)
