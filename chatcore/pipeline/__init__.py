"""The reply pipeline: input steps before generation, output steps on the reply stream."""
