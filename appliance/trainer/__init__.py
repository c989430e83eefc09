"""The trainer service's side of training: the queue of submitted runs and its daemon."""
