"""Why the relaxed VAEs learn less than the straight-through ones: the measurements.

Trains the demo's categorical VAE (8 latents x 8 classes, binarised 8x8 digits, 200 epochs,
seed 0) in several ways and measures, on the held-out images, in nats per image:

- ``discrete -ELBO``: the discrete model's negative ELBO with the discrete guide, the honest
  score of ``benchmarks/vae.py`` (it equals ``one-hot recon + categorical KL``);
- ``categorical KL``: ``KL(Cat(q(z | x)) || uniform)`` summed over the latents: how much the
  encoder says about the image (0: posterior collapse; at most ``8 log 8 = 16.6``);
- ``Concrete KL``: the exact KL of the relaxed posterior to the relaxed prior at equal
  temperatures (it does not depend on the common temperature);
- ``one-hot recon`` and ``relaxed recon``: ``-log p(x | z)`` with ``z`` one-hot samples of
  ``q``, and with relaxed samples at the run's final temperature: the decoder's train/test
  mismatch is their difference;
- ``own objective``: the run's training loss on the test set.

It also prints the KL of one latent as its posterior sharpens: the categorical KL stays below
``log K``, the Concrete KL grows without bound, and with Maddison et al.'s different prior and
posterior temperatures it starts above 0 (a floor: the guide cannot equal the prior).

Run from the repository root (about 4 minutes on 2 cores)::

    python benchmarks/vae_diagnosis.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import pyro.distributions as dist
import torch
from _common import environment_lines

from pyro_concrete import Concrete, ExpConcrete
from pyro_concrete.demo.data import load_binarized_digits
from pyro_concrete.demo.training import TrainConfig, independent_pixels_neg_log_lik, train_vae
from pyro_concrete.kl import categorical_relaxed_kl

RUNS = {
    "ST": {"estimator": "st"},
    "Gumbel-Softmax, τ 1 → 0.5": {"estimator": "gumbel_softmax"},
    "Gumbel-Softmax, τ 1 → 0.1": {"estimator": "gumbel_softmax", "min_temperature": 0.1, "anneal_rate": 1e-3},
    "Concrete, τ 2/3 = prior, MC KL": {"estimator": "concrete", "prior_temperature": 2 / 3},
    "Concrete, τ 1/2 = prior, exact KL": {
        "estimator": "concrete",
        "relaxed_kl": "exact",
        "initial_temperature": 0.5,
    },
    "Concrete, τ 2/3 = prior, MC KL, warm-up": {
        "estimator": "concrete",
        "prior_temperature": 2 / 3,
        "kl_warmup_epochs": 100,
    },
    "Concrete, τ 2/3, prior 2/5 (Maddison et al.)": {"estimator": "concrete"},
    "Concrete, τ 1/5, prior 1/8, warm-up": {
        "estimator": "concrete",
        "initial_temperature": 0.2,
        "prior_temperature": 0.125,
        "kl_warmup_epochs": 100,
    },
}


@torch.no_grad()
def measure(vae, x: torch.Tensor, draws: int = 20) -> dict[str, float]:
    logits = vae.encode(x)
    log_q = logits.log_softmax(-1)
    classes = vae.num_classes
    categorical_kl = (log_q.exp() * (log_q + math.log(classes))).sum((-1, -2)).mean()
    relaxed_kl = categorical_relaxed_kl(logits, torch.zeros_like(logits)).sum(-1).mean()
    one_hot = relaxed = 0.0
    for _ in range(draws):
        z = dist.OneHotCategorical(logits=logits).sample()
        one_hot -= dist.Bernoulli(logits=vae.decode(z)).log_prob(x).sum(-1).mean().item() / draws
        soft = Concrete(vae.temperature, logits=logits).sample()
        relaxed -= dist.Bernoulli(logits=vae.decode(soft)).log_prob(x).sum(-1).mean().item() / draws
    return {
        "categorical KL": categorical_kl.item(),
        "Concrete KL": relaxed_kl.item(),
        "one-hot recon": one_hot,
        "relaxed recon": relaxed,
    }


def kl_curve(draws: int) -> list[list[float]]:
    """KL of one 8-class latent whose first logit is ``gap`` above the others, to uniform."""
    torch.manual_seed(0)
    rows = []
    prior = torch.zeros(8, dtype=torch.float64)
    for gap in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0):
        logits = torch.cat([torch.tensor([gap], dtype=torch.float64), torch.zeros(7, dtype=torch.float64)])
        log_q = logits.log_softmax(-1)
        row = [gap, (log_q.exp() * (log_q + math.log(8))).sum().item()]
        row.append(categorical_relaxed_kl(logits, prior).item())
        for posterior_t, prior_t in ((2 / 3, 2 / 5), (0.2, 0.125)):
            q = ExpConcrete(posterior_t, logits=logits.expand(draws, 8))
            y = q.sample()
            row.append((q.log_prob(y) - ExpConcrete(prior_t, logits=prior).log_prob(y)).mean().item())
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=200_000, help="samples per Monte Carlo KL")
    parser.add_argument("--json", action="store_true", help="also print each run as a JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_x, test_x = load_binarized_digits()

    print("\n".join(environment_lines()))
    print(
        f"Categorical VAE of the demo, {args.epochs} epochs, seed {args.seed}; held-out, nats per image "
        f"(no latents: {independent_pixels_neg_log_lik(train_x, test_x):.2f})\n"
    )
    columns = ["discrete -ELBO", "categorical KL", "Concrete KL", "one-hot recon", "relaxed recon"]
    print("| run | " + " | ".join(columns) + " | mismatch | own objective |")
    print("|---|" + "---:|" * (len(columns) + 2))
    for label, settings in RUNS.items():
        config = TrainConfig(epochs=args.epochs, seed=args.seed, **settings)
        result = train_vae(config, train_x, test_x)
        row = {"discrete -ELBO": result.neg_elbo, **measure(result.vae, test_x)}
        mismatch = row["one-hot recon"] - row["relaxed recon"]
        cells = " | ".join(f"{row[c]:.2f}" for c in columns)
        print(f"| {label} | {cells} | {mismatch:.2f} | {result.objective:.2f} |", flush=True)
        if args.json:
            print(json.dumps({"run": label, **row, "own objective": result.objective}))

    print("\nKL of one 8-class latent to the uniform prior, its first logit `gap` above the others:\n")
    headers = ["gap", "categorical", "Concrete, equal τ (exact)", "Concrete MC, τ 2/3, prior 2/5"]
    headers.append("Concrete MC, τ 1/5, prior 1/8")
    print("| " + " | ".join(headers) + " |\n|" + "---:|" * len(headers))
    for row in kl_curve(args.draws):
        print("| " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
