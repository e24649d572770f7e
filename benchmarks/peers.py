"""Published figures of other papers' models, for the suite's plot (``run.py``).

Each paper's own numbers on the dataset it names, not measured here: they are suite knowledge, so the slim runtime
carries none of them.
"""

#: (name, parameters, GFLOPs, Dice, dataset), as each paper reports them.
PEERS = (
    ("U-Net", 7.77e6, 13.76, 0.8699, "ISIC17"),
    ("UNeXt", 1.47e6, 0.57, 0.8661, "ISIC18"),
    ("TinyU-Net", 0.48e6, 1.67, 0.8891, "ISIC18"),
    ("EGE-UNet", 0.053e6, 0.072, 0.8946, "ISIC18"),
    ("UltraLight VM-UNet", 0.049e6, 0.060, 0.9091, "ISIC17"),
    ("MALUNet", 0.175e6, 0.083, 0.8813, "ISIC17"),
    ("SimpleESKNet-32 N=2 (paper)", 0.673e6, 8.60, 0.8646, "Kvasir-SEG"),
)
