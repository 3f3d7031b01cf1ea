"""Compile the train step for a target ahead of time and check that it fits, without the target's hardware.

  python3 -m MaxText.train_compile configs/base.yml compile_topology=v5e-256 compile_topology_num_slices=2 \
      model_name=llama2-7b per_device_batch_size=4 [compiled_trainstep_file=step.pkl]

Compiles the very step train runs (trainer.jit_train_step: same shardings, same donation) for the target's
devices, prints the memory each device needs (parameters, optimizer state, XLA's arguments / temporaries /
generated code) and the FLOPs, and exits 2 when that exceeds the target's HBM. compile_topology=local compiles
for this machine's devices; compiled_trainstep_file then saves an executable that train loads in place of its
own compile. TPU targets need libtpu and GPU targets (a100-N, h100-N, h200-N, b200-N) JAX's CUDA plugin, both
unpacked by setup.sh outside the environment; docs/scale.md lists what works where.
Exit codes: 0 compiled and fits, 2 config error, unknown or unavailable target, or does not fit.
"""

import sys

from MaxText.config import ConfigError, exit_on_config_error, load_config


def _gib(n: int) -> str:
    return f"{n / (1 << 30):8.3f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):8.3f} MiB"


def print_report(target, num_slices: int, s, report: dict, xla_flops: float, pallas_calls: int) -> None:
    """Prints the target, the kernel plan, the memory per device (aot.memory_report) and the FLOPs per
    device per step."""
    devices = s.mesh.devices.size
    hbm = ""
    if target.hbm_bytes:
        hbm = f" of {target.memory_text()} ({100 * report['total'] / target.usable_bytes:.1f}%)"
    lines = [
        f"compiled the train step for {target.name} x {num_slices} slice(s): {devices} devices "
        f"({s.mesh.devices.flat[0].device_kind}), mesh {dict(s.mesh.shape)}, global batch "
        f"{s.global_batch} x {s.cfg.max_target_length} tokens",
        kernel_line(s.model.config.kernel_plan, s.cfg.max_target_length, pallas_calls),
        "memory per device:",
        f"  parameters          {_gib(report['params'])}",
        f"  optimizer state     {_gib(report['optimizer_state'])}",
        f"  arguments           {_gib(report['arguments'])}   (train state + batch)",
        f"  outputs             {_gib(report['outputs'])}   ({_gib(report['aliased']).strip()} of it aliased"
        " to the donated state)",
        f"  temp (activations)  {_gib(report['temp'])}",
        f"  generated code      {_gib(report['generated_code'])}",
        f"  total               {_gib(report['total'])}{hbm}",
        f"FLOPs per device per step: {f'{xla_flops:.4e}' if xla_flops else 'none given'} (XLA cost analysis), "
        f"{s.flops_per_step / devices:.4e} (analytic, without remat recompute)",
    ]
    print("\n".join(lines), flush=True)


def kernel_line(plan, length: int, pallas_calls: int) -> str:
    """The kernels the compiled step runs: the plan's attention kernel for this length, the dot, and how
    many Pallas kernels (Triton / Mosaic custom calls) XLA's compiled program holds."""
    pallas = f", {pallas_calls} Pallas kernel call(s) in the compiled HLO" if plan.target != "cpu" else ""
    return f"kernels for {plan.target}: attention {plan.attend_kernel(length)}, dot {plan.dot}{pallas}"


def compile_for(cfg, target, devices) -> int:
    """Compiles the train step for `devices` (the target's), prints the report, checks the fit, saves it."""
    from MaxText.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
    from MaxText.training import aot, trainer  # pylint: disable=import-outside-toplevel

    s = trainer.build(cfg, devices)
    with mesh_lib.activate(s.mesh, s.rules):
        lowered = trainer.jit_train_step(s).lower(*trainer.abstract_step_args(s))
        try:
            compiled = lowered.compile()
        except aot.jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program that exceeds HBM before we can measure it.
            if str(e).startswith("RESOURCE_EXHAUSTED"):
                aot.check_fits(None, target, str(e).split(":", 1)[1].strip())
            raise
    report = aot.memory_report(compiled, s.abstract_state, s.shardings)
    calls = aot.pallas_kernel_calls(compiled, s.model.config.kernel_plan.target)
    print_report(target, cfg.compile_topology_num_slices, s, report, aot.compiled_flops(compiled), calls)
    aot.check_fits(report, target)
    if cfg.compiled_trainstep_file:
        aot.save_executable(cfg.compiled_trainstep_file, compiled, cfg, devices)
        print(f"saved the compiled train step to {cfg.compiled_trainstep_file}", flush=True)
    return 0


@exit_on_config_error
def main(argv) -> int:
    """Resolves compile_topology to its devices (refusing what has no description) and compiles for them."""
    cfg = load_config(argv)
    from MaxText.training import aot  # pylint: disable=import-outside-toplevel

    if not cfg.compile_topology:
        raise ConfigError("compile_topology='': name a target (local, v5e-256, v4-8, h100-8, ...)")
    target = aot.resolve_target(cfg.compile_topology)
    if cfg.compiled_trainstep_file:
        # An executable that came from the persistent compilation cache serializes without its CPU kernels
        # (jax 0.10.2: "Function ... not found" when run): compile afresh. Must precede the first compile.
        aot.jax.config.update("jax_enable_compilation_cache", False)
    if target.platform in ("tpu", "gpu"):
        # The host side runs on CPU; libtpu or the CUDA plugin only describes the target, never opens a device.
        aot.jax.config.update("jax_platforms", "cpu")
    return compile_for(cfg, target, aot.target_devices(target, cfg.compile_topology_num_slices))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
