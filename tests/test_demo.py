"""The main demo (python -m pyro_concrete.demo) and the categorical VAE behind it.

The tests that load the digits need scikit-learn, and the one that draws the figure needs
matplotlib (the ``demo`` extra); without them those tests skip. The package imports both
lazily, so the command line and model tests run everywhere. tqdm, the third demo extra, is a
dependency of Pyro itself, and no test shows the progress bar (``--quiet``).
"""

import itertools
import math

import pyro
import pytest
import torch

from pyro_concrete.demo import main
from pyro_concrete.demo.cli import parse_args
from pyro_concrete.demo.data import load_binarized_digits
from pyro_concrete.demo.model import CategoricalVAE
from pyro_concrete.demo.training import TrainConfig, train_vae

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def needs_digits():
    """Skips the calling test without scikit-learn, which ships the digits."""
    return pytest.importorskip("sklearn.datasets", reason="the demo's digits need scikit-learn")


@pytest.mark.slow
def test_demo_runs_and_improves(tmp_path, capsys):
    needs_digits()
    pytest.importorskip("matplotlib", reason="the demo's figure needs matplotlib")
    out = tmp_path / "figure.png"
    result = main(["--epochs", "2", "--latents", "4", "--classes", "4", "--out", str(out), "--quiet"])
    train = result.train
    # A negative ELBO of binary data is at least -log p(x) > 0 (a mass is at most 1).
    assert math.isfinite(train.neg_elbo) and train.neg_elbo > 0
    # Untrained: about 64 log 2 = 44.4 nats; any fit of the pixel frequencies gets near 25.
    assert train.neg_elbo < train.initial_neg_elbo - 10
    assert result.figure == out and out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert f"{train.neg_elbo:.2f} nats per image" in printed
    assert str(out.resolve()) in printed
    assert len(train.losses) == len(train.temperatures) == 2 * math.ceil(1438 / 100)


@pytest.mark.parametrize(
    "estimator, settings",
    [
        ("gumbel_rao", {}),
        ("reinmax", {}),
        ("gumbel_softmax", {}),
        ("concrete", {}),
        ("concrete", {"relaxed_kl": "exact", "kl_warmup_epochs": 2}),
    ],
)
def test_every_estimator_trains(estimator, settings):
    needs_digits()
    train_x, test_x = load_binarized_digits()
    config = TrainConfig(
        estimator=estimator, epochs=1, num_latents=3, num_classes=3, eval_particles=5, **settings
    )
    result = train_vae(config, train_x[:400], test_x[:100])
    assert math.isfinite(result.neg_elbo) and 0 < result.neg_elbo < result.initial_neg_elbo - 5
    assert math.isfinite(result.objective) and result.objective > 0
    assert all(math.isfinite(loss) for loss in result.losses)
    if settings.get("kl_warmup_epochs"):  # a weight rising linearly over the warm-up steps
        steps = 2 * len(result.losses)
        assert result.kl_scales == pytest.approx([(i + 1) / steps for i in range(len(result.losses))])
    else:
        assert set(result.kl_scales) == {1.0}
    # The schedule: ReinMax's temperature floor is 1 (its authors' advice); Concrete's is
    # fixed at Maddison et al.'s posterior temperature (2/3 for 3 classes, their 4-ary
    # choice being 1: nearest is 4 classes); 0.5 otherwise.
    schedule = config.schedule()
    expected = {"reinmax": (1.0, 1.0), "concrete": (1.0, 1.0)}.get(estimator, (1.0, 0.5))
    assert (schedule.initial, schedule.minimum) == expected


def test_training_losses_and_temperatures():
    """Each estimator's own Pyro loss, and the prior temperatures of the Concrete model."""
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    from pyro_concrete.demo.model import maddison_temperatures
    from pyro_concrete.infer import GumbelSoftmax_ELBO

    for estimator in ("st", "gumbel_rao", "reinmax"):
        assert type(CategoricalVAE(estimator=estimator).training_loss()) is TraceMeanField_ELBO
    assert type(CategoricalVAE(estimator="gumbel_softmax").training_loss()) is GumbelSoftmax_ELBO
    concrete = CategoricalVAE(estimator="concrete", temperature=2 / 3)
    assert concrete.prior_temperature == 0.4 and type(concrete.training_loss()) is Trace_ELBO
    exact = CategoricalVAE(estimator="concrete", temperature=0.5, prior_temperature=0.5, relaxed_kl="exact")
    assert type(exact.training_loss()) is TraceMeanField_ELBO
    exact.temperature = 0.4  # annealed away from the prior's: no exact KL exists
    with pytest.raises(ValueError, match="equal prior and guide temperatures"):
        exact.training_loss()
    assert maddison_temperatures(2) == (2 / 3, 1 / 2)
    assert maddison_temperatures(4) == (1.0, 2 / 3)
    assert maddison_temperatures(8) == maddison_temperatures(10) == (2 / 3, 2 / 5)
    assert maddison_temperatures(3) == (1.0, 2 / 3)  # nearest in log n: 4
    with pytest.raises(ValueError, match="prior_temperature is for estimator 'concrete' only"):
        CategoricalVAE(estimator="st", prior_temperature=0.5)
    with pytest.raises(ValueError, match="relaxed_kl='exact' is for estimator 'concrete' only"):
        CategoricalVAE(estimator="gumbel_softmax", relaxed_kl="exact")
    with pytest.raises(ValueError, match="relaxed_kl must be one of"):
        CategoricalVAE(estimator="concrete", relaxed_kl="analytic")
    # the demo's configuration: Maddison et al.'s temperatures, or one for the exact KL
    assert TrainConfig(estimator="concrete").model_prior_temperature() == 0.4
    assert TrainConfig(estimator="concrete", relaxed_kl="exact").model_prior_temperature() == 2 / 3
    with pytest.raises(ValueError, match="one fixed temperature"):
        TrainConfig(estimator="concrete", relaxed_kl="exact", min_temperature=0.1)
    with pytest.raises(ValueError, match="one fixed temperature"):
        TrainConfig(estimator="concrete", relaxed_kl="exact", prior_temperature=0.3)
    with pytest.raises(ValueError, match="prior_temperature is for estimator 'concrete' only"):
        TrainConfig(estimator="st", prior_temperature=0.5)
    with pytest.raises(ValueError, match="relaxed_kl='exact' is for estimator 'concrete' only"):
        TrainConfig(estimator="gumbel_softmax", relaxed_kl="exact")
    assert TrainConfig(estimator="st").model_prior_temperature() is None
    # the model's own default for the exact KL: the guide's temperature
    assert CategoricalVAE(estimator="concrete", temperature=0.7, relaxed_kl="exact").prior_temperature == 0.7


@pytest.mark.parametrize("estimator", ["st", "gumbel_softmax", "concrete"])
def test_kl_scale_weights_the_kl_term_only(estimator):
    """The loss is linear in kl_scale, and extrapolated to 0 it is the likelihood term alone."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = CategoricalVAE(num_pixels=6, num_latents=2, num_classes=3, estimator=estimator, hidden=(5,))
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    loss = vae.training_loss()

    def loss_at(scale):
        vae.kl_scale = scale
        pyro.set_rng_seed(1)
        return loss.differentiable_loss(vae.model, vae.guide, x).item()

    quarter, half, one = loss_at(0.25), loss_at(0.5), loss_at(1.0)  # (Pyro refuses a scale of 0)
    assert one - half == pytest.approx(2 * (half - quarter), rel=1e-4, abs=1e-4)
    at0 = 2 * half - one
    # at 0: minus the log-likelihood of the guide's sample
    pyro.set_rng_seed(1)
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"]
    z = z.exp() if estimator == "concrete" else z
    nll = -torch.distributions.Bernoulli(logits=vae.decode(z)).log_prob(x).sum().item()
    assert at0 == pytest.approx(nll, rel=1e-5)


def test_split_is_fixed_and_binary():
    datasets = needs_digits()
    train_a, test_a = load_binarized_digits()
    train_b, test_b = load_binarized_digits()
    assert torch.equal(train_a, train_b) and torch.equal(test_a, test_b)
    assert train_a.shape == (1438, 64) and test_a.shape == (359, 64)
    assert set(torch.cat([train_a, test_a]).unique().tolist()) == {0.0, 1.0}
    # The split is a partition of the 1797 images: no test image is a copy of a training
    # image unless the data set itself holds duplicates.
    data = torch.as_tensor(datasets.load_digits().data)
    assert sorted(map(tuple, (data >= 8).float().tolist())) == sorted(
        map(tuple, torch.cat([train_a, test_a]).tolist())
    )


def test_held_out_neg_elbo_matches_enumeration():
    """The Trace_ELBO estimate against the exact ELBO summed over every latent configuration."""
    needs_digits()
    torch.manual_seed(0)
    pyro.clear_param_store()
    latents, classes = 2, 3
    vae = CategoricalVAE(num_pixels=64, num_latents=latents, num_classes=classes, hidden=(16,))
    _, test_x = load_binarized_digits()
    x = test_x[:4].double()
    vae = vae.double()
    with torch.no_grad():
        log_q = vae.encode(x).log_softmax(-1)  # (4, L, K)
        terms = []
        for combo in itertools.product(range(classes), repeat=latents):
            z = torch.nn.functional.one_hot(torch.tensor(combo), classes).double()  # (L, K)
            log_lik = torch.distributions.Bernoulli(logits=vae.decode(z)).log_prob(x).sum(-1)
            lq = (log_q * z).sum((-1, -2))
            terms.append((lq.exp(), log_lik - latents * math.log(classes) - lq))
        q = torch.stack([t[0] for t in terms])  # (configurations, 4)
        f = torch.stack([t[1] for t in terms])
        exact = -(q * f).sum(0)  # negative ELBO per image
        variance = (q * f**2).sum(0) - exact**2  # of one particle's estimate
    particles = 4000
    estimate = vae.held_out_neg_elbo(x, num_particles=particles)
    se = math.sqrt(variance.sum().item() / particles) / x.shape[0]
    assert abs(estimate - exact.mean().item()) < 5 * se + 1e-9


def test_cli_options(capsys):
    args = parse_args(["--estimator", "gumbel_rao", "--epochs", "3", "--latents", "5", "--classes", "6"])
    assert (args.estimator, args.epochs, args.latents, args.classes) == ("gumbel_rao", 3, 5, 6)
    args = parse_args(
        ["--estimator", "concrete", "--temperature", "0.2", "--prior-temperature", "0.125"]
        + ["--kl-warmup-epochs", "10", "--min-temperature", "0.1", "--anneal-rate", "1e-3"]
    )
    assert (args.temperature, args.prior_temperature, args.relaxed_kl) == (0.2, 0.125, "mc")
    assert (args.kl_warmup_epochs, args.min_temperature, args.anneal_rate) == (10, 0.1, 1e-3)
    assert parse_args(["--estimator", "concrete", "--relaxed-kl", "exact"]).relaxed_kl == "exact"
    assert parse_args(["--batch-size", "64"]).batch_size == 64 and not parse_args([]).distributed
    for bad in (["--prior-temperature", "0.5"], ["--relaxed-kl", "exact"], ["--temperature", "0"]):
        with pytest.raises(SystemExit) as info:
            parse_args(bad)
        assert info.value.code == 2
    assert "is for estimator 'concrete' only, not 'st'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # the exact KL needs one temperature
        parse_args(["--estimator", "concrete", "--relaxed-kl", "exact", "--prior-temperature", "0.3"])
    assert info.value.code == 2 and "one fixed temperature" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    for bad in (
        ["--estimator", "rebar"],
        ["--classes", "1"],
        ["--epochs", "0"],
        ["--seed", "-1"],
        ["--batch-size", "0"],
    ):
        with pytest.raises(SystemExit) as info:
            parse_args(bad)
        assert info.value.code == 2
    with pytest.raises(SystemExit):
        parse_args(["--latents", "2.5"])
    assert "latents must be an int >= 1, got '2.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--classes", "1"])
    assert "argument --classes: classes must be an int >= 2, got 1" in capsys.readouterr().err


def test_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="estimator"):
        CategoricalVAE(estimator="rebar")
    with pytest.raises(ValueError, match="num_classes"):
        CategoricalVAE(num_classes=1)
    with pytest.raises(ValueError, match="num_latents"):
        CategoricalVAE(num_latents=0)
    # the package's scalar checks: TypeError for a wrong type, ValueError for a bad value
    with pytest.raises(TypeError, match="num_latents"):
        CategoricalVAE(num_latents=2.0)
    with pytest.raises(ValueError, match="temperature"):
        CategoricalVAE(temperature=0.0)
    with pytest.raises(ValueError, match=r"hidden\[1\]"):
        CategoricalVAE(hidden=(16, 0))
    with pytest.raises(ValueError, match="rao_samples"):
        CategoricalVAE(rao_samples=0)
    vae = CategoricalVAE(num_pixels=4, num_latents=1, num_classes=2, hidden=(3,))
    with pytest.raises(ValueError, match="num_particles"):
        vae.held_out_neg_elbo(torch.zeros(2, 4), num_particles=0)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("estimator", "rebar", ValueError),
        ("epochs", 0, ValueError),
        ("epochs", 1.5, TypeError),
        ("num_classes", 1, ValueError),
        ("seed", -1, ValueError),
        ("batch_size", True, TypeError),
        ("learning_rate", 0.0, ValueError),
        ("learning_rate", "3e-3", TypeError),
        ("hidden", (8, -1), ValueError),
        ("initial_temperature", float("nan"), ValueError),
        ("min_temperature", float("inf"), ValueError),
        ("anneal_rate", -1e-4, ValueError),
        ("anneal_every", 0, ValueError),
        ("eval_particles", None, TypeError),
        ("prior_temperature", 0.0, ValueError),
        ("relaxed_kl", "analytic", ValueError),
        ("kl_warmup_epochs", -1, ValueError),
    ],
)
def test_train_config_rejects_bad_numbers(field, value, error):
    with pytest.raises(error, match=field):
        TrainConfig(**{field: value})
