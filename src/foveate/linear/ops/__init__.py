"""One folder per method: the chunked op, the one-token step and the ``naive`` sequential
recurrence it is tested against (``foveate.linear.ops.<method>.naive``)."""
