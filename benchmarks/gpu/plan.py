"""What the GPU measurement does, and how long each part may take: the full plan for one H100/H200 (at most
8 minutes in all) and the smoke plan (the same code on a CPU at tiny sizes, in well under a minute).

Sections run in this order, the most important first, each within its own budget (seconds); a section that
runs past its budget plus GRACE_S is ended (the process is restarted at the next section), so a slow or
hung part never costs the others their measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECIPE = "recipes/cifar10.toml"  # the paper's CIFAR-10 U-Net (35.7M parameters) and training settings
SECTIONS = ("network", "bound", "precision", "invariance", "sampler", "ode", "trainer", "fid", "projection")
ALWAYS_RUN = ("projection",)  # arithmetic on the other sections' results: runs even when the time is spent
GRACE_S = 20.0  # past its budget a section is given this long to finish its current measurement
SECTION_OVERRUN_EXIT = 75  # exit status of a process ended for a section that ran past its hard limit


@dataclass(frozen=True)
class Plan:
    name: str
    total_s: float  # the whole run.sh, install included
    budgets: dict[str, float]  # per section
    recipe_overrides: tuple[str, ...] = ()  # --set overrides of RECIPE (the smoke's tiny U-Net, small T)
    data: str = "embedded:test"  # the images of every bound and likelihood (32x32x3, ships with the install)
    train_data: str = "embedded:train"
    # the network alone
    batch_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    precisions: tuple[str, ...] = ("fp32", "tf32", "bf16")
    compile: bool = True  # torch.compile variants (about a minute of compiling each on a GPU)
    compile_min_left_s: float = 60.0  # a compile starts only with this much of its section's budget left
    time_per_config_s: float = 0.3  # timed seconds per configuration (after warm-up), at least 3 calls
    flop_batch: int = 8
    matmul_n: int = 8192  # the bf16 matmul timed as the attained reference
    # the bound engine, its precision cost and its invariance
    bound_images: int = 32
    invariance_images: int = 8
    invariance_batches: tuple[int, int] = (256, 1000)
    resume_images: int = 16
    resume_shard: int = 2
    # the sampler: seconds per step measured over a few steps at each batch size
    sampler_batches: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    sampler_steps: int = 4
    # the ODE likelihood: images per solve (batch) -> images
    ode_batches: dict[int, int] = field(default_factory=lambda: {1: 1, 64: 64})
    ode_trained_images: int = 8  # of the packaged (trained) model, for a trained model's NFE
    ode_tolerance: float | None = None  # rtol = atol of the solver; None: nll --ode's default
    # the trainer
    train_time_s: float = 2.0  # timed seconds per setting, after 2 warm-up steps
    # FID features
    fid_images: int = 2500  # embedded:train and embedded:test, each also mirrored: two halves of 2500 > 2048 features
    fid_batch: int = 250


FULL = Plan(
    name="full",
    total_s=450.0,
    budgets={"network": 185, "bound": 30, "precision": 40, "invariance": 45, "sampler": 30, "ode": 40,
             "trainer": 30, "fid": 25, "projection": 5},
)

SMOKE = Plan(
    name="smoke",
    # generous: a smoke run takes about 30 s on an idle 2-core CPU; the budgets only stop a hang
    total_s=240.0,
    budgets={"network": 30, "bound": 20, "precision": 20, "invariance": 40, "sampler": 15, "ode": 25,
             "trainer": 20, "fid": 25, "projection": 5},
    recipe_overrides=("model.ch=16", "model.ch_mult=[1, 2]", "model.num_res_blocks=1", "model.norm_groups=8",
                      "diffusion.T=20", "diffusion.beta_end=0.5", "training.batch_size=8",
                      "training.grad_clip_group=8"),
    batch_sizes=(4, 8),
    compile=False,
    time_per_config_s=0.05,
    flop_batch=2,
    matmul_n=256,
    bound_images=4,
    invariance_images=3,
    invariance_batches=(16, 7),
    resume_images=16,
    resume_shard=1,
    sampler_batches=(2, 4),
    sampler_steps=2,
    ode_batches={1: 1, 2: 2},
    ode_trained_images=1,
    ode_tolerance=0.1,
    train_time_s=0.2,
    fid_images=8,
    fid_batch=4,
)

PLANS = {"full": FULL, "smoke": SMOKE}
