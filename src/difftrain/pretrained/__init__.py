"""Starting from pre-trained weights: read a source (a run, a checkpoint, a diffusers folder),
transfer its weights with a report, LoRA and freezing, and export to the diffusers format."""
