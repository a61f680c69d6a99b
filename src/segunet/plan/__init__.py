"""Planning a recipe from the data (``segunet plan``, ``experiment=auto``): the dataset's
fingerprint measured once (``fingerprint``), the rules that turn it and the device into
settings (``rules``), the timing of real training steps (``timing``) and the plan written as
an experiment config (``recipe``). Imports models, data, config, errors; nothing of the
packages that train, predict, score, export or parse the command line."""
