"""Datasets: real recordings (NTU RGB+D, UTKinect), SynthKinect, windows and the on-disk store."""
