"""`make mutation`: run mutmut on the core modules and print the score and every surviving mutant.

The modules and their tests are pyproject.toml's [tool.mutmut] (only_mutate, and the tests that exercise them
in pytest_add_cli_args_test_selection). `--only` narrows the run to some of those modules and `--tests` to
the tests that exercise them, e.g.

    python tools/mutation.py --only src/corgigan/data/filter_rules.py \
        --tests tests/test_filter.py tests/test_filter_edges.py tests/test_geometry.py

Each run works in its own folder under mutants/ (git-ignored): pyproject.toml with the narrowed [tool.mutmut],
and links to src/ and tests/, so runs over different modules keep their own results and a narrowed run
never touches the repository's files. Re-running continues where mutmut left off (it caches results);
`--fresh` starts over, which is what a score after new tests needs (mutmut re-tries a cached mutant only
when its function or the test selection changed).

In the larger modules only the functions that carry the module's job are mutated (CORE_FUNCTIONS: serve's
Host check and request bounds, the explorer's limits, the loop's phases, EMA and lazy regularisation, the
importer's guards); the rest of those modules is wiring, logging and messages. `--all-functions` mutates
every function.

The score is killed / (mutants checked), where timeouts and type-check catches count as killed. Survivors
that were examined and found equivalent (no test can tell them apart from the original) are listed in
EQUIVALENT with the reason; the score is printed with and without them. Survivors that a test could tell apart
only by pinning float rounding are listed in EXPLAINED, and count as survivors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("mutation")

ROOT = Path(__file__).resolve().parents[1]
# What a mutmut exit code means (mutmut.stats.status_by_exit_code, restated so this report does not depend
# on mutmut's internals beyond the .meta files it writes).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          35: "suspicious", 36: "timeout", 37: "caught by type check", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", 2: "interrupted",
          None: "not checked"}
KILLED = {"killed", "timeout", "caught by type check"}

# Surviving mutants examined by hand that no test can kill: the mutant behaves exactly as the original.
# Key: the mutant's name as `mutmut show` takes it; value: why it is equivalent.
_ZIP_STRICT = "zip's strict only matters for unequal lengths; both sides are fixed tuples of equal length"
_SORT_KIND = ("sort_values over several columns sorts with a stable lexsort and never reads kind (and rows "
              "equal on every key are equal in every column read)")
_DEAD_EMPTY = ("the empty-result branch is dead: near_pairs gives _pairs_from only starts < len(h), so the "
               "column loop runs at least once and `found` is never empty")
_UNIQUE_IDS = "image_id is the filter table's unique key: with no equal keys every sort kind gives one order"
_VERBOSE = ("imagededup's verbose drives only encode_images' and find_duplicates' progress bars; "
            "encode_image never reads it")


def _names(function: str, numbers: tuple[int, ...]) -> list[str]:
    return [f"{function}__mutmut_{i}" for i in numbers]


_SERVE, _EXPL = "corgigan.play.serve.", "corgigan.play.explorer."
_LOOP, _AUG = "corgigan.stylegan2.loop.", "corgigan.stylegan2.augment."
_IMP = "corgigan.stylegan2.importer."
EQUIVALENT: dict[str, str] = {
    **dict.fromkeys(_names("corgigan.data.filter_rules.x_decide", (52, 55, 57, 85, 88, 89)), _ZIP_STRICT),
    "corgigan.data.filter_rules.x_decide_all__mutmut_14": "DataFrame.to_dict lower-cases orient",
    "corgigan.data.filter_rules.x_plan_crops__mutmut_3": "the initial shard is read only once a chunk exists",
    **dict.fromkeys(_names("corgigan.data.filter_rules.x_boxes_by_image", (26, 28, 36, 37)), _SORT_KIND),
    **dict.fromkeys(_names("corgigan.data.dedup.x__pairs_from", (32, 34, 35, 36, 37, 38, 39)), _DEAD_EMPTY),
    "corgigan.data.dedup.x_near_pairs__mutmut_46":
        "sorting an empty (0, 3) table by an empty lexsort gives the same empty int64 table",
    **dict.fromkeys(_names("corgigan.data.dedup.x_choose", (5, 7, 11)), _UNIQUE_IDS),
    "corgigan.data.dedup.x_choose__mutmut_33":
        "negating crop_side in its own integer type orders as in int64: exactly for signed types, and for "
        "unsigned ones the wrap-around keeps the descending order of sides >= 1",
    "corgigan.data.dedup.x_choose__mutmut_37":
        "negating confidence in its own type (float32 from the table, float64, object of floats) orders as "
        "in float64: the widening is exact and monotonic",
    **dict.fromkeys(_names("corgigan.data.dedup.x_hash_image", (10, 11)), _VERBOSE),
    "corgigan.data.funnel.x_warnings__mutmut_36":
        "decodable == 0 only when every image failed to decode, so no_dog is 0 and both return []; only "
        "counts that do not add up (which funnel_counts refuses to make) could tell them apart",
    **dict.fromkeys(["corgigan.stylegan2.loss.x_r1_penalty__mutmut_9",
                     "corgigan.stylegan2.loss.x_path_lengths__mutmut_9"],
                    "dropping only_inputs=True leaves torch.autograd.grad's default, True (ignored anyway)"),
    **dict.fromkeys(_names("corgigan.stylegan2.loss.xǁStyleGAN2Lossǁ_d_real", (11, 13)),
                    "total starts as a 0-d zero on the CPU instead of logits' device: a 0-d CPU tensor adds "
                    "to a tensor on any device as a scalar, and total is always added to (a loss or R1) "
                    "before backward, so it ends on logits' device with the same value"),
    **dict.fromkeys(_names("corgigan.stylegan2.pickles.xǁ_Arrayǁ__setstate__", (49, 51)),
                    "numpy reads a reshape order case-insensitively: 'f' is 'F' and 'c' is 'C'"),
    **dict.fromkeys(["corgigan.stylegan2.networks.x_conv2d_down2__mutmut_3",
                     "corgigan.stylegan2.networks.xǁConv2dLayerǁforward__mutmut_23"],
                    "every kernel reaching it is square (Conv2dLayer takes one kernel_size), so "
                    "w.shape[-2] == w.shape[-1]"),
    **dict.fromkeys(_names("corgigan.stylegan2.networks.x_modulated_conv2d", (51, 71)),
                    "float() parses 'INF' case-insensitively: float('INF') == float('inf')"),
    **dict.fromkeys(_names("corgigan.stylegan2.networks.xǁFullyConnectedǁforward", (11, 12)),
                    "bias_act(F.linear(x, w), b, act='linear') is x @ w.T + b, as F.linear(x, w, b) computes "
                    "it (bit-identical on CPU in 200 random float32 cases)"),
    **dict.fromkeys(["corgigan.stylegan2.networks.xǁConv2dLayerǁforward__mutmut_29",
                     "corgigan.stylegan2.networks.xǁSynthesisLayerǁforward__mutmut_64",
                     "corgigan.stylegan2.networks.xǁToRGBLayerǁforward__mutmut_22"],
                    "Tensor.to(None) changes nothing, and bias_act casts b to x's dtype itself"),
    "corgigan.stylegan2.networks.xǁMappingNetworkǁforward__mutmut_32":
        "torch.cat of a one-element list equals that element",
    "corgigan.stylegan2.networks.xǁToRGBLayerǁforward__mutmut_8":
        "demodulate=None is falsy in both places modulated_conv2d reads the flag",
    "corgigan.stylegan2.networks.xǁMinibatchStdLayerǁforward__mutmut_65":
        "y is built from x by mean, sqrt, reshape and repeat, so it has x's dtype and .to(None) changes "
        "nothing",
    "corgigan.stylegan2.pickles.x__load_from_bytes__mutmut_51":
        "Tensor.set_(storage) replaces the size and storage of the tensor it is called on: "
        "torch.empty(1) and torch.empty(0) end the same",
    "corgigan.stylegan2.pickles.x__unwrap__mutmut_14":
        "lstrip('XX_XX') strips the same leading '_' as lstrip('_'): no record type's name starts with X",
    **dict.fromkeys(_names("corgigan.stylegan2.pickles.x__numpy_dtype", (1, 2)),
                    "numpy's dtype reduction always passes (code, align, copy): the defaults are never used"),
    **dict.fromkeys(_names("corgigan.stylegan2.pickles.x__load_from_bytes", (33, 36)),
                    "torch.load's weights_only defaults to True since torch 2.6 (requirements.txt pins "
                    "2.14): None and leaving it out both mean that default"),
    # serve and the explorer
    **dict.fromkeys(_names(f"{_SERVE}xǁHandlerǁ_host_ok", (9, 10))
                    + _names(f"{_SERVE}xǁHandlerǁ_has_body", (3, 4, 13, 14))
                    + _names(f"{_SERVE}xǁHandlerǁ_read_length", (3, 4, 31, 32)),
                    "header names are case-insensitive (email.message get/get_all): 'host' is 'Host'"),
    f"{_SERVE}xǁHandlerǁ_host_ok__mutmut_11":
        "without a Host header the default 'XXXX' is neither an address nor localhost: refused as '' is",
    **dict.fromkeys(_names(f"{_SERVE}xǁHandlerǁ_read_length", (6, 7)),
                    "_has_body is true for any Transfer-Encoding, so _send closes the connection anyway"),
    f"{_SERVE}xǁHandlerǁ_read_length__mutmut_33":
        "int('XXXX') raises ValueError as int('') does: the same 411",
    **dict.fromkeys(_names(f"{_SERVE}xǁHandlerǁ_read_length", (52, 53)),
                    "length > limit >= 1 means Content-Length is not '0', so the body counts as unread and "
                    "_send closes anyway"),
    f"{_SERVE}xǁHandlerǁ_read_length__mutmut_58":
        "at left == 0, rfile.read(0) returns b'' and the loop ends: the same bytes are read",
    **dict.fromkeys(_names(f"{_SERVE}xǁHandlerǁ_read_length", (67, 68)),
                    "each read takes min(left, chunk), and BufferedReader.read(n) blocks for n bytes or EOF: "
                    "a "
                    "larger chunk drops the same bytes in fewer calls"),
    **dict.fromkeys(_names(f"{_SERVE}xǁHandlerǁ_read_length", (88, 89)),
                    "a cut-short body stays unread (cleared only after a full read), so _send closes anyway"),
    f"{_SERVE}xǁHandlerǁ_read_length__mutmut_96":
        "_body_unread is only tested for truth; None is falsy like False",
    **dict.fromkeys(_names(f"{_SERVE}x_image_request", (81, 91)),
                    "_int(q, 'mix', ...) runs only for a non-empty mix_text: its default is never returned"),
    f"{_SERVE}x_grid_request__mutmut_2":
        "Limits.grid_cap does not read its resolution (a grid keeps thumbnails at any resolution)",
    f"{_EXPL}xǁExplorerǁsubmit__mutmut_55": "PIL's Image.save upper-cases the format: 'png' is 'PNG'",
    f"{_EXPL}xǁExplorerǁsubmit__mutmut_72":
        "OrderedDict.popitem reads `last` for its truth; None is falsy like False",
    f"{_EXPL}xǁExplorerǁsubmit__mutmut_76":
        "jobs and latents gain and lose each id together (only submit does either), so `old` is always in "
        "jobs and pop without a default never raises",
    # the importer
    **dict.fromkeys(_names(f"{_IMP}xǁ_Kwargsǁfixed", (11, 13)),
                    "no value passed to `fixed` as allowed is a tuple, so its tuple conversion never runs"),
    **dict.fromkeys(_names(f"{_IMP}x__expect_class", (6, 7)),
                    "unreachable: load_reference_pickle refuses a PyTorch network that is not a "
                    "PersistentObject first, and TensorFlow networks never reach _expect_class"),
    f"{_IMP}x__disc_kwargs__mutmut_13":
        "check_size names the value by its kind when name is None, and both are 'mbstd_group_size'",
    f"{_IMP}x__log2__mutmut_8":
        "for r >= 4, r & (r - 2) == 0 exactly when r is a power of two, and r < 4 is refused first",
    **dict.fromkeys(_names(f"{_IMP}x__from_reference", (10, 13)),
                    "rsplit('.') and rsplit('.', 2) end in the same last component as rsplit('.', 1)"),
    **dict.fromkeys(_names(f"{_IMP}x__from_reference", (29, 30)) + _names(f"{_IMP}x__t", (3, 6)),
                    "load_state_dict copies each value into the module's own float32 tensor (copy_ converts "
                    "dtype and layout)"),
    **dict.fromkeys(_names(f"{_IMP}x__t", (4, 7)),
                    "np.array copies either way; a Fortran-ordered copy has the same values and is made "
                    "contiguous before loading"),
    f"{_IMP}x__t__mutmut_9": "numpy reads an order case-insensitively: 'c' is 'C'",
    **dict.fromkeys(_names(f"{_IMP}x_check_buildable", (6, 8, 9)),
                    "on the meta device no initialiser draws from torch's CPU generator, so building there "
                    "without fork_rng leaves it where it was"),
    **dict.fromkeys(_names(f"{_IMP}x_check_buildable", (18, 30)),
                    "D is built exactly when the spec has D_kwargs, and every caller names D exactly then"),
    f"{_IMP}x__fit__mutmut_4": "load_state_dict's strict defaults to True",
    f"{_IMP}x_import_pickle__mutmut_106":
        "with_D matters only when spec.D_kwargs is set, exactly when D is read",
    **dict.fromkeys(_names(f"{_IMP}x_weight_layout", (77, 104)),
                    "32768 is a multiple of every power-of-two resolution up to 4096: "
                    "32769 // r == 32768 // r"),
    **dict.fromkeys(_names(f"{_IMP}x_check_transfer", (49, 53)),
                    "past the dataset check, the data's channels and label_dim equal the spec's"),
    f"{_IMP}x_check_transfer__mutmut_72": "differences' prefix defaults to ''",
    **dict.fromkeys(_names(f"{_IMP}x__config_for", (63, 65)),
                    "config_to_dict deep-copies the config before it is stored and nothing changes the "
                    "spec's dicts: a shallow copy behaves the same"),
    **dict.fromkeys(_names(f"{_IMP}x_snapshot_state", (34, 44, 51)),
                    "_config_for returns only networks of the file's weight layout, so _fit never fails here "
                    "and its message is never read"),
    **dict.fromkeys(_names(f"{_IMP}x_snapshot_state", (72, 74, 75)),
                    "sha256 streams: other chunk sizes give the same digest"),
    # Both TF spec readers build res_list = 4..resolution for the fmap_min check.
    **dict.fromkeys(_names(f"{_IMP}x__tf_generator_spec", (170, 172))
                    + _names(f"{_IMP}x__tf_discriminator_spec", (52, 54)),
                    "widths min(base // r, cmax) never increase with r and a resolution >= 8 always "
                    "exists: adding 1 and 2 or dropping 4 never changes the minimum fmap_min is checked "
                    "against"),
    f"{_IMP}x__tf_generator_tensors__mutmut_128":
        "any negative noise index means no noise input (if noise_index >= 0)",
    # the loop
    f"{_LOOP}xǁTickStatsǁreduce__mutmut_10": "the third column of `flat` is never read",
    f"{_LOOP}x_make_optimizer__mutmut_18": "torch.optim.Adam's default eps is 1e-8",
    f"{_LOOP}x__group_follows_batch_gpu__mutmut_22":
        "a == b already returned False two lines above, so a <= b is a < b",
    **dict.fromkeys(_names(f"{_LOOP}xǁ_Trainerǁstep", (9, 10, 16, 17)),
                    "non_blocking only makes the copy asynchronous, never changes its values"),
    **dict.fromkeys(_names(f"{_LOOP}xǁ_Trainerǁstep", (26, 27)),
                    "reduce_gradients_ turns None grads into zeros before Adam, and 0.0 + g == g; "
                    "Freeze-D grads "
                    "stay None either way"),
    f"{_LOOP}xǁ_Trainerǁstep__mutmut_36": "has_pl is only read for its truth; None is falsy like False",
    f"{_LOOP}xǁ_Trainerǁstep__mutmut_86":
        "step_losses is read only by check_finite's isfinite, and -x is finite exactly when x is",
    f"{_LOOP}xǁ_Trainerǁstep__mutmut_91": "adding 1 to a sum never changes whether it is finite",
    **dict.fromkeys(_names(f"{_LOOP}xǁ_Trainerǁstep", (105, 108, 124, 127)),
                    "torch.stack promotes float64 with int64 to float64"),
    f"{_LOOP}xǁ_Trainerǁstep__mutmut_120":
        "negating both the pl sum and its count leaves their ratio bit-identical",
    f"{_LOOP}xǁ_Trainerǁstep__mutmut_133":
        "a module left requiring grad only wastes backward work: the next phase's "
        "zero_grad(set_to_none=True) "
        "clears it, and reduce/Adam touch only that phase's module",
    **dict.fromkeys(_names(f"{_LOOP}xǁ_Trainerǁafter_step", (33, 34)),
                    "at an ADA step the sign count is at least 4 x batch: every step runs D's main or both "
                    "phase"),
    f"{_LOOP}xǁ_Trainerǁafter_step__mutmut_50": "ada_adjust's speed_kimg default is 500, which is ADA_KIMG",
    # augment
    **dict.fromkeys(_names(f"{_AUG}x__reflect_index", (20, 22)),
                    "at idx == size - 1, period - idx == 2(size - 1) - (size - 1) == size - 1: reflecting it "
                    "returns the same index"),
    **dict.fromkeys(_names(f"{_AUG}x__lattice_indices", (24, 27)),
                    "torch.meshgrid's indexing defaults to 'ij' (it only warns that it may change)"),
    **dict.fromkeys(_names(f"{_AUG}x__lattice_indices", (39, 41)) + _names(f"{_AUG}x_reflect3d", (5, 7))
                    + _names(f"{_AUG}x_saturate3d", (7, 9, 14, 16)) + _names(f"{_AUG}x_band_filters", (3, 5))
                    + _names(f"{_AUG}xǁAugmentPipeǁforward", (29, 31, 87, 89)),
                    "a constant of 0s and 1s in torch's default float32, combined with float64 tensors, "
                    "promotes to float64 exactly: the same values"),
    **dict.fromkeys(_names(f"{_AUG}x__matrix", (4, 6)),
                    "every cell is a float64 tensor (from _as_f64, or arithmetic on one) or the integer 0 or "
                    "1: without the dtype the integers stay int64 and stack promotes them exactly"),
    f"{_AUG}x__chosen__mutmut_1":
        "the bool mask is only multiplied into float64 values or int64 draws, where it promotes to the same "
        "0s and 1s",
    **dict.fromkeys(_names(f"{_AUG}xǁAugmentPipeǁ_color", (63, 66))
                    + _names(f"{_AUG}xǁAugmentPipeǁ_geometry", (26, 29, 52, 55)),
                    "randint draws the same integers in int64 as in float64, and times the float64 mask "
                    "they promote to the same values"),
    f"{_AUG}x__lattice_indices__mutmut_44":
        "inv[:, :3] adds the homogeneous row as a third row of src, which is never read",
    **dict.fromkeys(_names(f"{_AUG}x_warp", (99, 102, 113, 118)),
                    "affine_grid's and grid_sample's align_corners default to False (None warns, then means "
                    "False)"),
    f"{_AUG}x_rotate3d__mutmut_11": "math.isclose's default rel_tol is 1e-9, the value removed",
    f"{_AUG}x_warp__mutmut_37": "upfirdn2d.upsample2d's default up is 2",
    f"{_AUG}x_warp__mutmut_131": "downsample2d's default down is 2",
    f"{_AUG}x_warp__mutmut_116": "grid_sample's default mode is 'bilinear'",
    f"{_AUG}x_warp__mutmut_117": "grid_sample's default padding_mode is 'zeros'",
    **dict.fromkeys(_names(f"{_AUG}x_warp", (80, 81, 82)),
                    "they change only centred_to_in's third row, which [:, :2, :] drops: "
                    "(A @ B)[:2] == A[:2] @ B"),
    f"{_AUG}x__warp_padding__mutmut_26":
        "the homogeneous column is never indexed (only lo/hi[0] and [1] are)",
    **dict.fromkeys(_names(f"{_AUG}x__warp_padding",
                           (3, 6, 38, 42, 43, 46, 47, 51, 52, 55, 78)),
                    "each only makes a pad larger (or a cap higher where the pad is below it): "
                    "reflect padding "
                    "puts the same mirrored pixel at the same source coordinate whatever the pad, and theta "
                    "accounts for pad_l and pad_t"),
    f"{_AUG}xǁAugmentPipeǁ_geometry__mutmut_146":
        "max(0, 1 - min(x, 2)) == max(0, 1 - min(x, 1)) for every x >= 0",
    **dict.fromkeys([f"{_AUG}xǁAugmentPipeǁforward__mutmut_35", f"{_AUG}xǁAugmentPipeǁforward__mutmut_93",
                     f"{_AUG}xǁAugmentPipeǁ_filter__mutmut_43", f"{_AUG}x__lattice_indices__mutmut_62",
                     f"{_AUG}x__lattice_indices__mutmut_65"],
                    "> vs >= on a small tolerance: an unaugmented image differs by exactly 0, and no drawn "
                    "transform lands exactly on the tolerance"),
    f"{_AUG}x__chosen__mutmut_6":
        "< vs <= differs only when a float64 uniform draw equals prob exactly (probability 0 in (0, 1), "
        "2**-53 at 0)",
    "corgigan.stylegan2.loss.x_seeded__mutmut_8":
        "SeedSequence.generate_state computes each word independently of how many are asked for: the first "
        "of two 64-bit words is the one word asked for",
    "corgigan.stylegan2.loss.xǁStyleGAN2Lossǁ_path_length_reg__mutmut_40":
        "subtracting instead of adding img * 0 adds -0 to the loss and -0 * gain to each synthesis gradient: "
        "the same values (the term exists only to keep every parameter in the graph)",
    "corgigan.stylegan2.loss.xǁStyleGAN2Lossǁgenerate__mutmut_33":
        "rand < p vs rand <= p: torch.rand gives multiples of 2**-24 in [0, 1), so they differ only on a "
        "draw exactly equal to p (at most 2**-24 a sample); p = 0 never reaches the line, p = 1 mixes "
        "either way",
    "corgigan.stylegan2.loss.xǁStyleGAN2Lossǁgenerate__mutmut_51":
        "dropping update_emas=False on the mixing latent's mapping call leaves MappingNetwork.forward's "
        "default, False",
}


# The functions mutated in modules where only part of the module is core (module -> "function" or
# "Class.method"); a module not named here is mutated whole.
CORE_FUNCTIONS: dict[str, list[str]] = {
    # The Host check, the body and length limits, and the parameter bounds of every request.
    "src/corgigan/play/serve.py": [
        "Handler._host_ok", "_is_loopback", "Handler._read_length", "Handler._has_body", "Handler._read_body",
        "_int", "_float", "_one", "image_request", "grid_request", "project_request"],
    # The model side's limits: picture budget, one projection at a time, upload checks, id lookups.
    "src/corgigan/play/explorer.py": ["Limits.grid_cap", "Limits.grid_pass", "FairLock.__init__",
                                      "FairLock.__enter__", "FairLock.__exit__", "Explorer._check_pixels",
                                      "Explorer._check_busy", "Explorer.submit", "Explorer.job",
                                      "Explorer.latent"],
    # The layers' arithmetic: modulation and demodulation, equalized learning rate with its multipliers,
    # the mapping's normalisation, truncation and running mean, noise, minibatch std, resampling, fp16 use.
    # The constructors' channel plumbing is pinned by the reference layout's parameter counts.
    "src/corgigan/stylegan2/networks.py": [
        "modulated_conv2d", "demodulation_coefficients", "normalize_2nd_moment", "mbstd_group", "check_shape",
        "FullyConnected.__init__", "FullyConnected.forward", "Conv2dLayer.forward", "MappingNetwork.forward",
        "SynthesisLayer.forward", "ToRGBLayer.forward", "MinibatchStdLayer.forward", "conv2d_up2",
        "conv2d_down2", "fp16_resolution", "use_fp16_now", "channels_per_resolution"],
    # The phases and their gains, the optimizers, EMA, the step with its lazy regularisation, the tick's
    # statistics, the finite-loss guard, and what may differ on resume.
    "src/corgigan/stylegan2/loop.py": [
        "TickStats.add", "TickStats.reduce", "make_optimizer", "make_phases", "frozen_d_parameters",
        "ema_beta",
        "_Trainer.step", "_Trainer.after_step", "_Trainer.check_finite", "resume_differences", "_without",
        "_group_of", "_group_follows_batch_gpu", "_batch_follows_gpus"],
}


def mutant_patterns(modules: list[str], all_functions: bool = False) -> list[str]:
    """mutmut name patterns for the core functions of `modules` (every function where none are named, or
    everywhere with `all_functions`)."""
    patterns = []
    for module in modules:
        dotted = ".".join(Path(module).with_suffix("").parts[1:])   # src/corgigan/x/y.py -> corgigan.x.y
        if all_functions or module not in CORE_FUNCTIONS:
            patterns.append(f"{dotted}.x*")          # functions (x_f) and methods (xǁClassǁf) alike
            continue
        for name in CORE_FUNCTIONS[module]:
            cls, _, func = name.rpartition(".")
            patterns.append(f"{dotted}.xǁ{cls}ǁ{func}__mutmut_*" if cls else f"{dotted}.x_{func}__mutmut_*")
    return patterns


# Survivors explained but not equivalent: they differ from the original only in float rounding (no test
# pins those bits, on purpose), or only on a GPU or with several processes (the run is CPU, one process).
_CPU = ("a device argument dropped or None: on the CPU every tensor is on the default device already; "
        "tests on a GPU tell them apart")
_ONE_PROCESS = ("an all-reduce or broadcast given None does nothing with one process (the 2-process gloo "
                "test in test_knobs_gpus.py is outside the run)")
EXPLAINED: dict[str, str] = {
    **dict.fromkeys(_names(f"{_LOOP}xǁTickStatsǁreduce", (5, 9))
                    + _names(f"{_LOOP}xǁ_Trainerǁstep", (6, 8, 13, 15, 31, 34, 58, 104, 107, 123, 126))
                    + _names(f"{_AUG}x_color_transform", (3, 5)) + _names(f"{_AUG}x_permute_pixels", (17,))
                    + _names(f"{_AUG}x_filter_separable", (9, 11, 26, 50))
                    + _names(f"{_AUG}x_warp", (27, 29, 103, 105))
                    + _names(f"{_AUG}xǁAugmentPipeǁforward", (47, 59, 65, 98, 141, 143, 163, 165))
                    + _names(f"{_AUG}xǁAugmentPipeǁ_filter", (50,)), _CPU),
    **dict.fromkeys(_names(f"{_LOOP}xǁTickStatsǁreduce", (17,))
                    + _names(f"{_LOOP}xǁ_Trainerǁstep", (134, 139)),
                    _ONE_PROCESS),
    f"{_LOOP}xǁ_Trainerǁcheck_finite__mutmut_19":
        "nimg / 1001 instead of / 1000 shows only in the message's third decimal of kimg after 500 images; "
        "a run that long takes 12 s",
    **dict.fromkeys(_names("corgigan.stylegan2.networks.xǁSynthesisLayerǁforward", (47, 54)),
                    "the fused and the unfused modulated convolution are the same linear map (both match the "
                    "by-hand float64 reference to 1e-10); which one runs changes only float rounding"),
}


def _section(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the TOML table [name] in `text` (up to the next table or the end)."""
    start = text.index(f"[{name}]")
    nxt = re.search(r"^\[", text[start + 1:], flags=re.MULTILINE)
    return start, (start + 1 + nxt.start()) if nxt else len(text)


def _workdir(only: list[str], tests: list[str]) -> Path:
    """The run's folder under mutants/: pyproject.toml with a narrowed [tool.mutmut]; src/, tests/ linked."""
    text = (ROOT / "pyproject.toml").read_text()
    cfg = tomllib.loads(text)["tool"]["mutmut"]
    modules = only or cfg["only_mutate"]
    unknown = [m for m in modules if m not in cfg["only_mutate"]]
    if unknown:
        raise SystemExit(f"--only {' '.join(unknown)}: not in [tool.mutmut] only_mutate of pyproject.toml")
    label = "all" if not only else "-".join(Path(m).stem for m in modules)
    work = ROOT / "mutants" / label
    work.mkdir(parents=True, exist_ok=True)
    cfg = {**cfg, "only_mutate": modules,
           "pytest_add_cli_args_test_selection": tests or cfg["pytest_add_cli_args_test_selection"]}
    body = "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()) + "\n"
    start, end = _section(text, "tool.mutmut")
    (work / "pyproject.toml").write_text(text[:start] + body + text[end:])
    for name in ("src", "tests", *cfg.get("also_copy", [])):
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    return work


def _results(work: Path) -> dict[str, str]:
    """Mutant name -> status, from the .meta files mutmut writes next to each mutated module."""
    out: dict[str, str] = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            out[name] = STATUS.get(code, "suspicious")
    return out


def _show(work: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True,
                          text=True)
    return proc.stdout.strip() or proc.stderr.strip()


def _module(name: str) -> str:
    """The module of a mutant: mutmut names a function's mutants module.x_f__mutmut_N and a method's
    module.xǁClassǁf__mutmut_N."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def report(work: Path, diffs: bool = True) -> int:
    """Print the score and the survivors of the run in `work`; return the number of unexplained survivors."""
    results = _results(work)
    if not results:
        print(f"no mutmut results under {work / 'mutants'}")
        return 1
    counts = Counter(results.values())
    checked = sum(n for status, n in counts.items() if status not in ("skipped", "not checked"))
    killed = sum(counts[s] for s in KILLED)
    survivors = sorted(n for n, s in results.items() if s not in KILLED | {"skipped", "not checked"})
    equivalent = [n for n in survivors if n in EQUIVALENT]
    explained = [n for n in survivors if n in EXPLAINED]
    open_ = [n for n in survivors if n not in EQUIVALENT and n not in EXPLAINED]
    print(f"\nmutation score: {killed}/{checked} killed = {100 * killed / max(checked, 1):.1f}%  "
          f"({', '.join(f'{s} {n}' for s, n in sorted(counts.items()))})")
    by_module: dict[str, list[str]] = {}
    for name, status in results.items():
        by_module.setdefault(_module(name), []).append(status)
    for module, statuses in sorted(by_module.items()):
        n = sum(1 for st in statuses if st not in ("skipped", "not checked"))
        k = sum(1 for st in statuses if st in KILLED)
        eq = sum(1 for name in equivalent if _module(name) == module)
        print(f"  {module}: {k}/{n} killed = {100 * k / max(n, 1):.1f}%, {eq} equivalent")
    if equivalent:
        print(f"without the {len(equivalent)} equivalent mutants: "
              f"{100 * killed / max(checked - len(equivalent), 1):.1f}%")
    stale = sorted(n for n in (set(EQUIVALENT) | set(EXPLAINED)) - set(survivors) if n in results)
    for name in stale:
        print(f"note: {name} is listed (equivalent or explained) but is no longer a survivor of this run")
    for name in equivalent:
        print(f"\nequivalent: {name}: {EQUIVALENT[name]}")
    for name in explained:
        print(f"\nexplained (a survivor): {name}: {EXPLAINED[name]}")
    for name in open_:
        print(f"\nSURVIVOR ({results[name]}): {name}")
        if diffs:
            print(_show(work, name))
    return len(open_)


_GENERATE = """
import os
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
os.makedirs("mutants", exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)
"""
_CODES = {"killed": 1, "survived": 0, "timeout": 36}   # as mutmut records them in its .meta files


def _record(metas: dict[Path, dict], inner: Path) -> dict[str, str]:
    """Write the verdicts in the sessions' result files into mutmut's .meta files; return them."""
    verdicts = dict(line.split()[:2] for out in sorted(inner.glob("in-process-*.out"))
                    for line in out.read_text().splitlines())
    for meta, data in metas.items():
        codes = data["exit_code_by_key"]
        codes.update({n: _CODES[v] for n, v in verdicts.items() if n in codes})
        meta.write_text(json.dumps(data))
    return verdicts


def run_in_process(work: Path, patterns: list[str], tests: list[str], jobs: int, env: dict[str, str]) -> None:
    """Try the mutants matching `patterns` that have no verdict yet or survived, against the current tests,
    `jobs` pytest sessions at once (tools/mutation_inprocess.py); verdicts go into mutmut's .meta files, so
    the report (and a later mutmut run) reads them as mutmut's own. Killed mutants keep their verdict (added
    tests cannot revive one); after a change to the mutated code, start over with --fresh."""
    if not (work / "mutants").is_dir():
        subprocess.run([sys.executable, "-c", _GENERATE], cwd=work, env=env, check=True, capture_output=True)
    # The tests as they are now: a re-run tries survivors against tests added since.
    shutil.copytree(ROOT / "tests", work / "mutants" / "tests", dirs_exist_ok=True)
    metas = {m: json.loads(m.read_text()) for m in sorted((work / "mutants").rglob("*.py.meta"))}
    _record(metas, work / "mutants")    # verdicts of an interrupted run: kept, not tried again
    for old in (work / "mutants").glob("in-process-*"):
        old.unlink()
    names = [n for data in metas.values() for n, code in data["exit_code_by_key"].items()
             if code in (None, 0) and any(fnmatch(n, p) for p in patterns)]
    cfg = tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]
    tests = tests or cfg["pytest_add_cli_args_test_selection"]
    inner = work / "mutants"
    session_env = dict(env, PYTHONPATH=os.pathsep.join([str(inner / "src"), str(ROOT / "tools")]))
    todo, verdicts, rounds = list(names), {}, 0
    with tqdm(total=len(names), desc="mutants", unit="mutant") as bar:
        # A session that cannot go on (a mutant left its threads blocked) ends early: the mutants it left
        # get new sessions, as long as each round decides some.
        while todo:
            rounds += 1
            procs, outs = [], []
            for i in range(jobs):
                share, out = inner / f"in-process-{rounds}-{i}.txt", inner / f"in-process-{rounds}-{i}.out"
                share.write_text("\n".join(todo[i::jobs]) + "\n")
                out.write_text("")
                outs.append(out)
                # Its own --basetemp, which pytest empties at start: a session ended early leaves nothing.
                cmd = [sys.executable, "-m", "pytest", "-q", "-p", "mutation_inprocess",
                       f"--basetemp={inner / f'pytest-tmp-{i}'}", *cfg.get("pytest_add_cli_args", []), *tests]
                procs.append(subprocess.Popen(
                    cmd, cwd=inner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env=dict(session_env, MUTATION_LIST=str(share), MUTATION_OUT=str(out))))
            done_before = len(verdicts)
            while any(p.poll() is None for p in procs):
                time.sleep(5)
                seen = sum(len(o.read_text().splitlines()) for o in outs)
                bar.update(done_before + seen - bar.n)
            verdicts = _record(metas, inner)
            if len(verdicts) == done_before:
                break
            todo = [n for n in todo if n not in verdicts]
    if todo:
        log.warning("%d mutants got no verdict (their test sessions ended early); re-run to try them",
                    len(todo))


def main(argv: list[str] | None = None) -> int:
    """Run mutmut over the configured (or the --only) modules, then print the report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=[], help="module paths from [tool.mutmut] only_mutate")
    ap.add_argument("--tests", nargs="+", default=[], help="the tests to run (default: the configured ones)")
    ap.add_argument("--max-children", type=int, default=1,
                    help="mutants tested at once (default 1: the machine is shared)")
    ap.add_argument("--report-only", action="store_true", help="print the last run's report, run nothing")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the run's cached results first: mutmut keeps a verdict until the function's "
                         "code or the test selection changes, so new tests in the same files, or a new "
                         "function, would not be tried against old mutants")
    ap.add_argument("--all-functions", action="store_true",
                    help="mutate every function, not only CORE_FUNCTIONS of the larger modules")
    ap.add_argument("--no-diffs", action="store_true", help="list survivors without their diffs")
    ap.add_argument("--in-process", action="store_true",
                    help="try the mutants in --max-children long pytest sessions "
                         "(tools/mutation_inprocess.py) instead of one forked pytest run each: several times "
                         "faster, without mutmut's process isolation and its choice of the tests that reach "
                         "each function")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = _workdir(args.only, args.tests)
    if args.fresh and not args.report_only:
        shutil.rmtree(work / "mutants", ignore_errors=True)
    if not args.report_only:
        t0 = time.perf_counter()
        env = dict(os.environ, PYTHONHASHSEED="0", YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false",
                   DVC_NO_ANALYTICS="1")
        # On as many cores as mutants at once: the data stages size their process pools by the cores they
        # may use, so with one core they run inline, where mutmut sees which functions the tests reach.
        cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:args.max_children])
        configured = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
        modules = args.only or configured
        names = mutant_patterns(modules, args.all_functions)
        if args.in_process:
            run_in_process(work, names, args.tests, args.max_children, env)
            log.info("in-process run took %.0f s in %s", time.perf_counter() - t0, work)
            return 1 if report(work, diffs=not args.no_diffs) else 0
        cmd = ["taskset", "-c", cores, sys.executable, "-m", "mutmut", "run", "--max-children",
               str(args.max_children), *names]
        proc = subprocess.run(cmd, cwd=work, env=env)
        log.info("mutmut ran %.0f s in %s (exit %d)", time.perf_counter() - t0, work, proc.returncode)
    return 1 if report(work, diffs=not args.no_diffs) else 0


if __name__ == "__main__":
    sys.exit(main())
