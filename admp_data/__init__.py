"""The data a run adapts on: labeled sources, unlabeled domain-shifted targets, your own npz or image
folder, the IoT and colour/texture shifts, and the partition of a target pool into devices."""
