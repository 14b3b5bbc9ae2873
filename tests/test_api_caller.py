"""What a notebook user meets: the API leaves the caller's objects as it found them, results read
themselves, arguments are checked and named as the caller wrote them, and the gap has one three-state
verdict."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm_bench
from ddpm_bench import UserError
from ddpm_bench.cli import main
from tests.synthetic_outputs import write_nll_dir

DIFFUSION = {"T": 20, "beta_end": 0.3}
TINY = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny.toml")


class DropoutDenoiser(torch.nn.Module):
    """A small eps network with dropout (so its train and eval modes differ) and a conv (a 4-D weight)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 3)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x, t):
        return self.out(self.drop(torch.relu(self.conv(x + self.embed(t)[:, :, None, None]))))


def images(n: int = 4, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # NHWC


def module_state(m: torch.nn.Module) -> dict:
    return {"modes": [x.training for x in m.modules()], "devices": {p.device for p in m.parameters()},
            "contiguous": [p.is_contiguous() for p in m.parameters()],
            "requires_grad": [p.requires_grad for p in m.parameters()],
            "rng": torch.random.get_rng_state().clone()}


def same_state(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("modes", "devices", "contiguous", "requires_grad")) and \
        torch.equal(a["rng"], b["rng"])


def test_a_training_loop_with_dropout_keeps_training_across_bound_calls():
    """Each bound call leaves the module in train mode with its memory format, device, requires_grad and
    torch's random state as they were; the identity follows the weights as they train; a proposal from an
    exact result in memory costs no pilot."""
    torch.manual_seed(0)
    net = DropoutDenoiser()
    net.out.weight.requires_grad_(False)  # a frozen part stays frozen
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    data = torch.from_numpy(images(8)).permute(0, 3, 1, 2).float() / 127.5 - 1
    model = ddpm_bench.load_model(net, diffusion=DIFFUSION)
    exact = ddpm_bench.bound(model, images(2))  # the proposal, once
    identities, totals = [], []
    for step in range(6):
        net.train()
        loss = net(data, torch.randint(0, 20, (8,))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2 == 1:
            before = module_state(net)
            r = ddpm_bench.bound(model, images(2), terms=3, proposal=exact)
            assert same_state(before, module_state(net)), "bound changed the caller's module"
            assert net.training and net.drop.training
            assert r.summary.network_evals == 2 * 4  # (1 + 3 drawn) per image, no pilot
            identities.append(r.identity.sha256)
            totals.append(r.total_bpd)
    assert len(set(identities)) == 3, "the identity must follow the weights as they train"
    assert net.drop(torch.ones(1000)).eq(0).any(), "dropout must still drop after the calls"
    assert np.all(np.isfinite(totals))


def test_the_module_runs_in_eval_mode_and_channels_last_only_inside_the_call():
    seen = {}

    class Spy(DropoutDenoiser):
        def forward(self, x, t):
            seen.setdefault("training", self.training)
            seen.setdefault("channels_last", self.conv.weight.is_contiguous(memory_format=torch.channels_last))
            return super().forward(x, t)

    torch.manual_seed(0)
    net = Spy().train()
    ddpm_bench.bound(ddpm_bench.load_model(net, diffusion=DIFFUSION, channels_last=True), images(1))
    assert seen == {"training": False, "channels_last": True}
    assert net.training and net.conv.weight.is_contiguous()


def test_the_callers_own_tensors_come_back_in_their_memory_format_with_their_gradients():
    """Each parameter comes back as the same storage in its own memory format (channels-last kept when the
    call runs contiguous), with the same gradient object: views and optimizer state stay valid."""
    torch.manual_seed(0)
    net = DropoutDenoiser().to(memory_format=torch.channels_last)
    net(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])).sum().backward()
    before = {n: (p.data_ptr(), p.is_contiguous(memory_format=torch.channels_last), p.grad, p.grad.data_ptr())
              for n, p in net.named_parameters()}
    for channels_last in (False, True):
        model = ddpm_bench.load_model(net, diffusion=DIFFUSION, channels_last=channels_last)
        ddpm_bench.bound(model, images(1), terms=3)
        ddpm_bench.sample(model, 1, steps=2)
        after = {n: (p.data_ptr(), p.is_contiguous(memory_format=torch.channels_last), p.grad, p.grad.data_ptr())
                 for n, p in net.named_parameters()}
        assert after == before


def test_a_module_made_half_precision_after_loading_is_refused_at_the_next_call():
    net = DropoutDenoiser()
    model = ddpm_bench.load_model(net, diffusion=DIFFUSION)
    net.half()
    with pytest.raises(UserError, match=r"torch.float16; .* give a float32 copy"):
        ddpm_bench.bound(model, images(1), terms=3)


def test_a_direct_call_of_the_network_leaves_the_module_too():
    torch.manual_seed(0)
    net = DropoutDenoiser().train()
    model = ddpm_bench.load_model(net, diffusion=DIFFUSION)
    out = model(torch.zeros(2, 3, 8, 8), torch.tensor([0, 19]))
    assert out.shape == (2, 3, 8, 8) and net.training


def test_load_model_of_a_network_takes_new_execution_settings_and_refuses_load_settings():
    model = ddpm_bench.load_model(DropoutDenoiser(), diffusion=DIFFUSION)
    bf16 = ddpm_bench.load_model(model, precision="bf16")
    assert bf16.execution.precision == "bf16" and model.execution.precision == "fp32"
    also = ddpm_bench.load_model(bf16, channels_last=False)  # one setting changed, the others kept
    assert also.execution.precision == "bf16" and also.execution.channels_last is False
    assert ddpm_bench.load_model(model) is model
    with pytest.raises(UserError, match=r"^load_model: flags= describes a model to load"):
        ddpm_bench.load_model(model, flags="--image_size 32")
    with pytest.raises(UserError, match=r"^load_model: flags= describes a checkpoint file"):
        ddpm_bench.load_model(DropoutDenoiser(), flags="--image_size 32")
    with pytest.raises(UserError, match=r"give execution= or device="):
        ddpm_bench.load_model("embedded", execution=ddpm_bench.Execution(), device="cpu")


def test_half_precision_and_meta_modules_are_one_line_saying_what_to_do():
    with pytest.raises(UserError, match=r"torch.float16; .* give a float32 copy \(copy.deepcopy\(module\).float\(\)\)"):
        ddpm_bench.load_model(DropoutDenoiser().half(), diffusion=DIFFUSION)
    with torch.device("meta"):
        meta = DropoutDenoiser()
    with pytest.raises(UserError, match=r"meta device and hold no weights; load them first"):
        ddpm_bench.load_model(meta, diffusion=DIFFUSION)


def test_results_read_themselves():
    torch.manual_seed(0)
    r = ddpm_bench.bound(ddpm_bench.load_model(DropoutDenoiser(), diffusion=DIFFUSION), images())
    assert r.total_bpd == r.summary.total_bpd and r.total_bpd_stderr == r.summary.total_bpd_stderr
    assert r.n_images == 4 and r.estimator == "exact" and r.quantity == "bound"
    assert r.identity.sha256 == r.summary.model["identity"]["sha256"]
    assert r.per_image.totals.shape == (4,)
    text = repr(r)
    assert len(text) < 300 and f"{r.total_bpd:.5f}" in text and "in memory" in text
    model = ddpm_bench.load_model("embedded")
    assert repr(model).startswith(f"<Network {model.identity.short()} ") and "T=1000" in repr(model)
    dry = ddpm_bench.bound(model, "embedded:test", num_images=2, dry_run=True)
    assert isinstance(dry, ddpm_bench.DryRun) and dry.network_evals == 2000 and dry.seconds > 0
    assert dry.alternatives and "nll: 2 images x 1000 terms" in dry.lines[0]


def test_the_public_names_are_exported():
    for name in ("OdeOptions", "FidMetrics", "GapResult", "RateDistortionCurve", "DryRun", "TrainResult",
                 "ReportResult", "ReproduceResult", "train", "report", "reproduce", "inspect", "EstimatorOptions"):
        assert hasattr(ddpm_bench, name), name
    assert callable(ddpm_bench.estimators.register) and callable(ddpm_bench.formats.register)
    assert "ode" in ddpm_bench.estimators.ESTIMATORS


@pytest.mark.parametrize("call, message", [
    (lambda m: ddpm_bench.bound(m, "embedded:test", num_images=5000),
     r"^num_images=5000 is larger than embedded:test, which holds 500 images"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", num_images=True), r"^num_images=True: must be a whole number"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", num_images="2"), r"^num_images='2': must be a whole number"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", num_images=2.5), r"^num_images=2.5: must be a whole number"),
    (lambda m: ddpm_bench.bound(m, None), r"^images= None: give a data source"),
    (lambda m: ddpm_bench.bound(m, images(2, 32), index=[0.5, 1.5]), r"^index=: data-set indices must be whole"),
    (lambda m: ddpm_bench.bound(m, images(2, 32), index=[-1, 1]), r"^index=: data-set indices must lie in 0..2\*\*62"),
    (lambda m: ddpm_bench.bound(m, images(2, 32), index=[2**63, 1]), r"^index=: data-set indices must lie in"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", terms=5, options=ddpm_bench.OdeOptions()),
     r"^terms=5 beside options=OdeOptions\(...\)"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", draws=3, options=ddpm_bench.OdeOptions()),
     r"^draws=3 beside options=OdeOptions"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", draws=3, terms=4), r"^draws=3 does not go with terms="),
    (lambda m: ddpm_bench.bound(m, "embedded:test", proposal="x"), r"^proposal= goes with terms="),
    (lambda m: ddpm_bench.bound(m, torch.zeros((2, 32, 32, 3), dtype=torch.uint8)),
     r"^images= a tensor of shape \(2, 32, 32, 3\) looks NHWC; .*images.permute\(0, 3, 1, 2\)"),
    (lambda m: ddpm_bench.bound(m, np.zeros((2, 3, 32, 32), np.uint8)),
     r"^images= an array of shape \(2, 3, 32, 32\) looks NCHW; .*images.transpose\(0, 2, 3, 1\)"),
    (lambda m: ddpm_bench.bound(m, torch.rand(2, 3, 32, 32) * 2 - 1),
     r"^images= a torch.float32 tensor with values in \[-\d.*; give uint8 values 0..255"),
    (lambda m: ddpm_bench.sample(m, 10**12), r"^num=1000000000000: must be 1..10,000,000"),
    (lambda m: ddpm_bench.sample(m, 2, image_size=10**6), r"^image_size=1000000: must be 1..4,096"),
    (lambda m: ddpm_bench.gap(42, "x"), r"^train= is of type int: give an nll result"),
    (lambda m: ddpm_bench.bound(m, "embedded:test", num_images=2, index=[5, 6]),
     r"^index= is for images given as an array or tensor; a data source numbers its own images"),
    (lambda m: ddpm_bench.bound(m, images(2, 32), terms=3, clip="no"), r"^clip='no': must be True or False"),
    (lambda m: ddpm_bench.sample(m, 1, steps=2, clip="False"), r"^clip='False': must be True or False"),
    (lambda m: ddpm_bench.train(TINY, "unused", execution="cpu"),
     r"^execution= must be an Execution\(...\), got str"),
    (lambda m: ddpm_bench.reproduce(TINY, "unused", execution=ddpm_bench.Execution(precision="bf16")),
     r"^execution= of reproduce sets its device only .*; leave out precision"),
    (lambda m: ddpm_bench.fid(images(2, 32), "embedded:test", execution=ddpm_bench.Execution(compile="default")),
     r"^execution= of fid sets its device only .*; leave out compile"),
    (lambda m: ddpm_bench.inspect(recipe=TINY, set=[3]), r"^set= must be a list of"),
    (lambda m: ddpm_bench.fid(images(8, 32), "embedded:test", feature_extractor="tiny-test", num_ref=20),
     r"^8 images in samples= are fewer than the 16 feature dimensions; .* allow_few_samples=True computes it"),
    (lambda m: ddpm_bench.fid(images(8, 32), "embedded:test", feature_extractor="vgg"),
     r"^feature_extractor='vgg': unknown"),
    (lambda m: ddpm_bench.FidOptions(backend="x"), r"^backend='x': choose from"),
    (lambda m: ddpm_bench.FidOptions(num_ref="100"), r"^num_ref='100': must be a whole number"),
    (lambda m: ddpm_bench.OdeOptions(divergence="x"), r"^divergence='x': choose from"),
    (lambda m: ddpm_bench.OdeOptions(rtol=2), r"^rtol= must be a number in \(0, 1\)"),
    (lambda m: ddpm_bench.train(None, "no-run-here"), r"^out='no-run-here': holds no training run .*; give recipe="),
    (lambda m: ddpm_bench.report("no-such-run", "unused"), r"^run_dirs='no-such-run': not a directory"),
    (lambda m: ddpm_bench.load_model(DropoutDenoiser(), diffusion={"T": "100"}), r"^diffusion\['T'\] must be"),
    (lambda m: ddpm_bench.load_model(DropoutDenoiser(), diffusion={"betaend": 0.2}),
     r"^diffusion= has no setting 'betaend'"),
    (lambda m: ddpm_bench.load_model(DropoutDenoiser(), diffusion=DIFFUSION, image_shape=(8, 8, 3)),
     r"^image_shape=\(8, 8, 3\): the channels come first, 1 or 3 \(C, H, W\); \(H, W, C\) order\? give \(3, 8, 8\)"),
    (lambda m: ddpm_bench.load_model(DropoutDenoiser(), diffusion=DIFFUSION, image_shape="32"),
     r"^image_shape='32': give \(C, H, W\)"),
    (lambda m: ddpm_bench.load_model("embedded", device="cuda:7" if not torch.cuda.is_available() else "mps"),
     r"^device='(cuda:7|mps)': "),
])
def test_arguments_are_checked_and_named_as_the_caller_wrote_them(call, message):
    model = ddpm_bench.load_model("embedded")
    with pytest.raises(UserError, match=message):
        call(model)


def test_one_string_given_to_set_is_one_override():
    assert ddpm_bench.inspect(recipe=TINY, set="training.steps=7")["config"]["training"]["steps"] == 7


def test_the_command_line_keeps_its_flags(capsys, tmp_path):
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:test", "--num-images", "5000", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--num-images 5000 is larger than embedded:test" in capsys.readouterr().err


@pytest.mark.parametrize("features, ref, message", [
    (np.zeros((1, 4)), np.zeros((5, 4)), r"^features=: 1 row\(s\); a Frechet distance"),
    (np.zeros((5, 4)), np.zeros((5, 3)), r"^features= has 4 features per image and ref_features= 3"),
    (np.zeros(5), np.zeros((5, 4)), r"^features=: expected features \(N, D\)"),
])
def test_fid_from_features_checks_its_inputs(features, ref, message):
    with pytest.raises(UserError, match=message):
        ddpm_bench.fid_from_features(features, ref)


@pytest.mark.parametrize("shift, max_gap, verdict", [(0.0, 10.0, "below"), (0.4, 0.1, "above"),
                                                     (0.4, 0.4, "undecided")])
def test_the_gap_has_one_three_state_verdict(tmp_path, capsys, shift, max_gap, verdict):
    write_nll_dir(tmp_path / "train", data="embedded:train", seed=1, n=40)
    write_nll_dir(tmp_path / "test", data="embedded:test", seed=2, shift_bpd=shift, n=40)
    result = ddpm_bench.gap(tmp_path / "train", tmp_path / "test", max_gap=max_gap, out=tmp_path / "gap.json")
    assert result.verdict == verdict and result.overfits == (verdict == "above")
    assert verdict in repr(result)
    assert ddpm_bench.outputs.GapResult.from_dict(
        __import__("json").loads((tmp_path / "gap.json").read_text())).verdict == verdict  # a file, not a folder
    status = main(["gap", str(tmp_path / "train"), str(tmp_path / "test"), "--max-gap", str(max_gap)])
    assert status == (1 if verdict == "above" else 0)
    err = capsys.readouterr().err
    assert {"below": "no overfitting beyond", "above": "overfits:", "undecided": "undecided:"}[verdict] in err


def test_a_gap_written_to_a_folder_goes_inside_it(tmp_path):
    write_nll_dir(tmp_path / "train", data="embedded:train", seed=1, n=40)
    write_nll_dir(tmp_path / "test", data="embedded:test", seed=2)
    (tmp_path / "run").mkdir()
    ddpm_bench.gap(tmp_path / "train", tmp_path / "test", out=tmp_path / "run")
    assert (tmp_path / "run" / "gap.json").is_file()


def test_gap_out_writes_the_file_it_names_whatever_its_suffix(tmp_path, capsys):
    write_nll_dir(tmp_path / "train", data="embedded:train", seed=1, n=40)
    write_nll_dir(tmp_path / "test", data="embedded:test", seed=2)
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "test"), "--max-gap", "10",
                 "--out", str(tmp_path / "gapresult")]) == 0
    assert (tmp_path / "gapresult").is_file()
    written = json.loads((tmp_path / "gapresult").read_text())
    assert written["verdict"] == "below"


def test_warnings_and_notes_are_not_printed(capsys, caplog):
    torch.manual_seed(0)
    with pytest.warns(ddpm_bench.DdpmBenchWarning, match="has no weights"):
        ddpm_bench.load_model(lambda x, t: x * 0, diffusion=DIFFUSION)
    with caplog.at_level(logging.INFO, logger="ddpm_bench"), warnings.catch_warnings():
        warnings.simplefilter("error", ddpm_bench.DdpmBenchWarning)
        ddpm_bench.bound(ddpm_bench.load_model(DropoutDenoiser(), diffusion={"T": 20, "beta_end": 0.9}), images(1))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


IDDPM = __import__("pathlib").Path(__file__).parent / "fixtures" / "iddpm_small"


def test_an_improved_diffusion_file_without_its_flags_says_to_give_them(capsys, tmp_path):
    with pytest.raises(UserError, match=r"^load_model\('.*xstart_linear.pt'\): looks like an improved-diffusion "
                                         r"state_dict .*load_model\(path, flags='--image_size 32"):
        ddpm_bench.load_model(IDDPM / "xstart_linear.pt")
    assert main(["nll", "--ckpt", str(IDDPM / "xstart_linear.pt"), "--data", "embedded:test", "--out",
                 str(tmp_path / "o")]) == 2
    assert '--flags "--image_size 32' in capsys.readouterr().err


def test_flags_are_refused_where_they_would_be_ignored_and_fp16_is_said(capsys, tmp_path):
    assert main(["nll", "--ckpt", "embedded", "--flags", "--image_size 32", "--data", "embedded:test",
                 "--num-images", "1", "--out", str(tmp_path / "o")]) == 2
    assert "embedded is a packaged model, which stores its own settings: leave out --flags" in \
        capsys.readouterr().err
    flags = (IDDPM / "xstart_linear_flags.txt").read_text().strip()
    with pytest.warns(ddpm_bench.DdpmBenchWarning, match=r"--use_fp16 True: .* precision='bf16'"):
        model = ddpm_bench.load_model(IDDPM / "xstart_linear.pt", flags=flags + " --use_fp16 True")
    assert model.execution.precision == "fp32"


def test_running_out_of_memory_is_one_error_naming_the_batch_size():
    class Hungry(DropoutDenoiser):
        def forward(self, x, t):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with pytest.raises(ddpm_bench.OutOfMemory, match=r"^out of GPU memory with batch_size=8: lower it "
                                                     r"\(e.g. batch_size=4\)"):
        ddpm_bench.bound(ddpm_bench.load_model(Hungry(), diffusion=DIFFUSION), images(2), batch_size=8)


def test_fid_of_fewer_samples_than_the_precision_recall_neighbourhood_leaves_it_out_and_says_so(tmp_path):
    """torch-fidelity's precision/recall needs a k-th neighbour (k = 3) in each set: with 2 samples it raised
    from inside the library; now the FID is computed and precision/recall are left out, with a warning."""
    with pytest.warns(ddpm_bench.DdpmBenchWarning, match=r"precision/recall need more than 3 images on each side"):
        m = ddpm_bench.fid(images(2, 32), "embedded:test", feature_extractor="tiny-test", num_ref=20,
                           allow_few_samples=True, out=tmp_path / "f")
    tf = m.by_backend["torch-fidelity"]
    assert np.isfinite(m.fid) and tf["precision"] is None and tf["recall"] is None
