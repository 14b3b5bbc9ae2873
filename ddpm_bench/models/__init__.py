"""Networks and where they come from: the paper's U-Net (`unet.py`), the registry that builds a network
from its config (`registry.py`), and the table of model formats (`formats/`), each giving a
`LoadedModel` (`loaded.py`) that `ddpm_bench.network.Network` runs."""
