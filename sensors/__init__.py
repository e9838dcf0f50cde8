"""Frame sources: Kinect v2, replay of recorded files, SynthKinect live, ZeroMQ."""
