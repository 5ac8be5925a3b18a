"""Our train step against PyTorch's DCGAN, side by side:
`python -m benchmarks train --peer pytorch`.

The peer is pytorch/examples `dcgan/main.py`, the DCGAN code most users would pick instead:
its networks (ngf = ndf = 64, nz = 100, 4x4 kernels, batch norm, Sigmoid + BCELoss, Adam
2e-4 / 0.5) and its loop body, verbatim in substance: D's step on a real batch and on
`fake.detach()`, then G's step on the same `fake` through the just-updated D, one G forward
per step. bfloat16 is `torch.autocast("cpu", torch.bfloat16)` around the forward passes, as
a PyTorch user would write it. Ours is the paper architecture at the same shape, batch and
widths, run by `fit()` as the train stage runs it. Images are random, in memory: throughput
does not depend on content. Fresh processes alternate, so a busy machine slows both alike.

The record also holds what the step costs and what the machine can do:
- `flops_per_image` for each update mode, counted from the layers of our model (convolution
  and dense multiply-adds x 2, forward, weight gradients and input gradients as each mode
  runs them; batch norm and activations are element-wise and left out);
- the GEMM peak: the best of several 4096^3 matrix products (`tf.linalg.matmul`) in the
  step's precision (bfloat16 or float32), all cores, measured before and after the
  contenders, the higher of the two;
- our step's FLOP/s as a share of the peak of its precision.

PyTorch is a benchmark-only dependency (requirements-bench.txt); nothing else imports it.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

PEER = "pytorch/examples dcgan/main.py"


def _torch_nets(image_size: int, nz: int = 100, ngf: int = 64, ndf: int = 64,
                nc: int = 3) -> tuple:
    """main.py's generator and discriminator for `image_size`, with its weights_init."""
    from torch import nn

    depth = int(np.log2(image_size // 4))  # stride-2 layers: 4 for 64 px
    widths = [ngf * 2 ** i for i in reversed(range(depth))]  # 512, 256, 128, 64
    g = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]),
         nn.ReLU(True)]
    for a, b in zip(widths, widths[1:], strict=False):
        g += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    g += [nn.ConvTranspose2d(widths[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
    widths = [ndf * 2 ** i for i in range(depth)]  # 64, 128, 256, 512
    d = [nn.Conv2d(nc, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for a, b in zip(widths, widths[1:], strict=False):
        d += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
              nn.LeakyReLU(0.2, inplace=True)]
    d += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]

    def weights_init(m: nn.Module) -> None:  # main.py's
        if "Conv" in type(m).__name__:
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif "BatchNorm" in type(m).__name__:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    return nn.Sequential(*g).apply(weights_init), nn.Sequential(*d).apply(weights_init)


def torch_rate(batch_size: int, image_size: int, precision: str, steps: int,
               warmup: int) -> float:
    """Images per second of main.py's loop body, `steps` after `warmup`, in this process."""
    import torch
    from torch import nn, optim

    torch.manual_seed(0)
    nz, nc = 100, 3
    net_g, net_d = _torch_nets(image_size, nz=nz, nc=nc)
    criterion = nn.BCELoss()
    opt_d = optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch_size, nc, image_size, image_size) * 2 - 1
    ones, zeros = torch.ones(batch_size), torch.zeros(batch_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=precision == "mixed_bfloat16")

    def step() -> None:
        # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
        net_d.zero_grad()
        with autocast:
            out_real = net_d(real).view(-1)
        err_d_real = criterion(out_real.float(), ones)
        err_d_real.backward()
        noise = torch.randn(batch_size, nz, 1, 1)
        with autocast:
            fake = net_g(noise)
            out_fake = net_d(fake.detach()).view(-1)
        err_d_fake = criterion(out_fake.float(), zeros)
        err_d_fake.backward()
        opt_d.step()
        # (2) Update G: maximize log(D(G(z))), through the updated D
        net_g.zero_grad()
        with autocast:
            out = net_d(fake).view(-1)
        err_g = criterion(out.float(), ones)
        err_g.backward()
        opt_g.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def gemm_peak(precision: str, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` timed (n x n) @ (n x n) products in TensorFlow, after
    one untimed; bfloat16 for mixed_bfloat16, else float32. Run in a fresh process."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.cast(tf.random.stateless_normal((n, n), (1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), (3, 4)), dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y)[0, :1],
                                                             tf.float32)))
    float(product(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(product(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def component_ms(precision: str, batch_size: int = 128, image_size: int = 64,
                 repeats: int = 10) -> dict[str, float]:
    """Median milliseconds of the parts of our step, each a `tf.function` on its own: G's
    forward, G's forward and backward (weights), D's forward, D's forward and backward
    (weights and input), and one Adam update of G. Where a precision gains or loses time.
    Sets TF state: run it in a fresh process."""
    import keras
    import tensorflow as tf

    from dcgan.core.config import TrainConfig
    from dcgan.core.seeding import seed_everything, set_precision
    from dcgan.nets.architectures import Discriminator, Generator

    seed_everything(0)
    set_precision(precision)
    cfg = TrainConfig(arch="paper", g_filters=64, d_filters=64, precision=precision)
    g, d = Generator(cfg, (image_size, image_size, 3)), Discriminator(cfg, (image_size,) * 2 + (3,))
    z = tf.random.stateless_normal((batch_size, 100), (0, 1))
    x = tf.random.stateless_uniform((batch_size, image_size, image_size, 3), (0, 2), -1, 1)
    adam = keras.optimizers.Adam(1e-3)
    adam.build(g.trainable_variables)
    ones = [tf.ones_like(v) * 1e-3 for v in g.trainable_variables]

    def backward(net, inputs, also=()):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total = tf.reduce_sum(tf.cast(net(inputs, training=True), tf.float32))
        return tape.gradient(total, net.trainable_variables + list(also))

    parts = {
        "G forward": lambda: tf.reduce_sum(tf.cast(g(z, training=True), tf.float32)),
        "G forward+backward": lambda: backward(g, z),
        "D forward": lambda: tf.reduce_sum(tf.cast(d(x, training=True), tf.float32)),
        "D forward+backward": lambda: backward(d, x, [x]),
        "Adam on G": lambda: adam.apply_gradients(zip(ones, g.trainable_variables, strict=True)),
    }
    times = {}
    for name, part in parts.items():
        step = tf.function(part)
        tf.nest.map_structure(np.asarray, step())
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            tf.nest.map_structure(np.asarray, step())
            runs.append(time.perf_counter() - start)
        times[name] = round(1000 * statistics.median(runs), 1)
    return times


def flops_per_image(image_size: int = 64, channels: int = 3) -> dict[str, float]:
    """GFLOP per image of one train step in each update mode, from our paper model's layers.

    Per net: F = forward multiply-adds x 2; a weight gradient costs F again; an input
    gradient costs F again, through every layer where the gradient must reach below it
    (all but the first, unless it flows on into G). A step is then:
    - alternating: D on real and on G(z1), D's backward (weights); G(z2), D, back through
      D into G: 2 G_f + 3 D_f + 2 D_w + 2 D_i' + D_i + G_w + G_i';
    - simultaneous: one G pass, D on real and fake, D's backward, G's through the same D:
      G_f + 2 D_f + 2 D_w + 2 D_i' + D_i + G_w + G_i';
    - reuse_fake (PyTorch's): as alternating with one G pass: G_f + 3 D_f + ... (the rest alike).
    """
    from dcgan.core.config import TrainConfig
    from dcgan.nets.architectures import Discriminator, Generator

    cfg = TrainConfig(arch="paper", g_filters=64, d_filters=64, latent_dim=100)
    shape = (image_size, image_size, channels)
    g_all, g_first = _forward_flops(Generator(cfg, shape))
    d_all, d_first = _forward_flops(Discriminator(cfg, shape))
    g_below, d_below = g_all - g_first, d_all - d_first  # input gradients but the first layer's
    shared = 2 * d_all + 2 * d_below + d_all + g_all + g_below  # 2 D_w, 2 D_i', D_i, G_w, G_i'
    per = {"alternating": 2 * g_all + 3 * d_all + shared,
           "simultaneous": g_all + 2 * d_all + shared,
           "reuse_fake": g_all + 3 * d_all + shared}
    return {mode: round(float(f) / 1e9, 4) for mode, f in per.items()}


def _forward_flops(net) -> tuple[float, float]:
    """(all layers', the first weighted layer's) forward FLOPs per image: 2 x multiply-adds
    of each Conv2D, Conv2DTranspose and Dense."""
    from keras import layers

    flops = []
    for layer in net.layers:
        if not isinstance(layer, layers.Conv2D | layers.Conv2DTranspose | layers.Dense):
            continue
        kernel = np.prod(layer.kernel.shape)  # kh x kw x in x out, or in x out
        # Conv2D: each output position applies the kernel's kh x kw x in per output channel;
        # Conv2DTranspose: each input position scatters it; Dense: once.
        if isinstance(layer, layers.Conv2DTranspose):
            positions = np.prod(layer.input.shape[1:3])
        elif isinstance(layer, layers.Conv2D):
            positions = np.prod(layer.output.shape[1:3])
        else:
            positions = 1
        flops.append(2.0 * kernel * positions)
    return float(sum(flops)), flops[0]


def _alternate(ours_args: dict, peer_args: dict,
               repeats: int) -> tuple[dict[str, list[float]], list[float]]:
    """Images/s of ours and the peer, `repeats` fresh processes each, alternating; and the
    GEMM peak before and after them (the higher is the machine's: a neighbour's load or a
    lower clock only ever lowers one)."""
    from benchmarks.records import in_fresh_process

    precision = {"precision": peer_args["precision"]}
    rates: dict[str, list[float]] = {"ours": [], "pytorch": []}
    peaks = [in_fresh_process("benchmarks.peer", "gemm_peak", precision)]
    for _ in range(repeats):
        rates["ours"].append(in_fresh_process("benchmarks.step", "measure", ours_args))
        rates["pytorch"].append(in_fresh_process("benchmarks.peer", "torch_rate", peer_args))
    peaks.append(in_fresh_process("benchmarks.peer", "gemm_peak", precision))
    return rates, peaks


def run(precision: str, update: str, batch_size: int, image_size: int, steps: int,
        warmup: int, repeats: int, steps_per_execution: int = 1,
        components: bool = False) -> dict:
    """Alternate ours and the peer, `repeats` fresh processes each; then the GEMM peak and
    the FLOP counts. The record `python -m benchmarks train --peer pytorch` prints.

    Raises:
        UserError: if PyTorch is not installed.
    """
    from benchmarks.kernels import step_parts
    from benchmarks.records import installed_torch, machine

    torch_version = installed_torch()
    ours_args = dict(contender="ours", arch="paper", batch_size=batch_size, precision=precision,
                     steps=steps, warmup=warmup, update=update,
                     steps_per_execution=steps_per_execution, image_size=image_size,
                     channels=3, filters=64)
    peer_args = dict(batch_size=batch_size, image_size=image_size, precision=precision,
                     steps=steps, warmup=warmup)
    rates, peaks = _alternate(ours_args, peer_args, repeats)
    ours, peer = (statistics.median(rates[n]) for n in ("ours", "pytorch"))
    peak = max(peaks)
    parts = step_parts(batch_size, image_size) if components else {}
    flops = flops_per_image(image_size)
    achieved = flops[update] * ours  # GFLOP/s
    target = 1.3 if precision == "mixed_bfloat16" else 1.6
    return {
        "benchmark": "train_vs_pytorch", "peer": PEER, "torch": torch_version,
        "arch": "paper", "image_shape": [image_size, image_size, 3], "batch_size": batch_size,
        "precision": precision, "update": update, "steps_per_execution": steps_per_execution,
        "steps": steps, "warmup": warmup, "repeats": repeats,
        "images_per_sec": {"ours": round(ours, 1), "pytorch": round(peer, 1)},
        "ours_over_pytorch": round(ours / peer, 3),
        "target": f"ours >= {target} x pytorch", "met": ours / peer >= target,
        "gflop_per_image": flops, "gemm_peak_gflops": round(peak, 1),
        "gemm_peak_runs": [round(p, 1) for p in peaks],
        "ours_gflops": round(achieved, 1), "ours_share_of_peak": round(achieved / peak, 3),
        "pytorch_share_of_peak": round(flops["reuse_fake"] * peer / peak, 3),
        "runs": {n: [round(r, 1) for r in v] for n, v in rates.items()}, **parts,
        "threads": os.cpu_count(), **machine(),
    }
