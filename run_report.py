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


def probe_lines(probes):
    """The last probes beside the unrefined images' marks; [] when the run had none."""
    if probes is None or not probes.last:
        return ["[*] No probes ran (--eval_step=0, too few images, or fewer refiner steps than --eval_step)"]
    last, marks = probes.last, probes.marks
    lines = [f"[*] Probes at refiner step {probes.last_step}: realism accuracy {last['realism_accuracy']:.2f} "
             f"(the unrefined images: {marks['realism_accuracy']:.2f}; 0.5: refined cannot be told from real), "
             f"statistics distance {last['statistics_distance']:.2f} real spreads "
             f"(unrefined: {marks['statistics_distance']:.2f})"]
    if "label_shift" in last:
        lines.append(f"    label proxy shift {last['label_shift']:.2f} px, grey-level change "
                     f"{last['grey_level_change']:.1f} levels")
    return lines


def print_run_report(config, paths, checkpoint, probes, finished, exports):
    """The end of a run: how far it got, the probes, where its outputs are (exports: the refiner's files), the
    next commands."""
    name = paths.model_name
    state = "Done" if finished else f"Stopped; resume with python main.py --load_path={name} and the same flags"
    lines = [f"[*] {state}. Checkpoint {checkpoint}", *probe_lines(probes),
             f"[*] Sample grids in {paths.sample_dir}/; exports {' and '.join(exports)}",
             f"[*] Watch it: tensorboard --logdir={config.log_dir}",
             f"[*] Refine the synthetic images with it: {refine_command(config, name)}"]
    print("\n".join(lines))
