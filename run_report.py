"""What a training run tells its user at the end: how refinement went and what to do next, in a few lines."""
# Flags whose non-default values another command on this run needs too: {flag: the default}.
DATA_FLAGS = {"data_set": "gaze", "data_dir": "data", "log_dir": "logs"}


def refine_command(config, name):
    """The command that refines the synthetic folder with this run's refiner."""
    flags = [f"--{flag}={getattr(config, flag)}" for flag, default in DATA_FLAGS.items()
             if getattr(config, flag) != default]
    if config.data_set == "folders" or "synthetic_image_dir" in getattr(config, "given_flags", ()):
        flags.append(f"--synthetic_image_dir={config.synthetic_image_dir}")
    return " ".join(["python main.py", "--is_train=False", f"--load_path={name}", *flags])


def probe_lines(probes, estimation_probe=None):
    """The last probes beside the unrefined images' marks; one line saying so when the run had none."""
    lines = []
    if probes is not None and probes.last:
        last, marks = probes.last, probes.marks
        lines.append(f"[*] Probes at refiner step {probes.last_step}: realism accuracy {last['realism_accuracy']:.2f} "
                     f"(the unrefined images: {marks['realism_accuracy']:.2f}; 0.5: refined cannot be told from "
                     f"real), statistics distance {last['statistics_distance']:.2f} real spreads "
                     f"(unrefined: {marks['statistics_distance']:.2f})")
        if "label_shift" in last:
            lines.append(f"    label proxy shift {last['label_shift']:.2f} px, grey-level change "
                         f"{last['grey_level_change']:.1f} levels")
    if estimation_probe is not None and estimation_probe.last:
        last = estimation_probe.last
        lines.append(f"    estimation probe: {last['estimation_error']:.2f} {estimation_probe.task.unit} on the real "
                     f"images (trained on the unrefined images: {last['estimation_error_synthetic']:.2f})")
    return lines or ["[*] No probes ran (--eval_step=0, too few images, or fewer refiner steps than --eval_step)"]


def print_run_report(config, paths, checkpoint, finished, exports, probes=None, estimation_probe=None,
                     best_refiner=None):
    """The end of a run: how far it got, the probes, the best refiner, where its outputs are (exports: the
    refiner's files), the next commands."""
    name = paths.model_name
    state = "Done" if finished else f"Stopped; resume with python main.py --load_path={name} and the same flags"
    best = [] if best_refiner is None else [best_refiner.report_line()]
    command = refine_command(config, name)
    lines = [f"[*] {state}. Checkpoint {checkpoint}", *probe_lines(probes, estimation_probe), *best,
             f"[*] Sample grids in {paths.sample_dir}/; exports {' and '.join(exports)}",
             f"[*] Watch it: tensorboard --logdir={config.log_dir}",
             f"[*] Refine the synthetic images with it: {command}"]
    if best_refiner is not None and best_refiner.state is not None:
        lines.append(f"    with the best refiner: {command} --refiner=best")
    print("\n".join(lines))
