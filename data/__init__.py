"""Data sets for SimGAN: gaze (UnityEyes + MPIIGaze), the bundled sample, the history buffer."""
