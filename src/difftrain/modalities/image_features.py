"""Image feature spaces for sample metrics (the FeatureExtractor type is in modalities/base.py).

    domain     a small classifier trained on the prepared dataset itself (the default;
               the honest choice for small grayscale data such as digits and MNIST)
    inception  Inception-v3 FID features from the standard weights file, via torch-fidelity
    FILE       a TorchScript module (.pt) or a torch.export program (.pt2): float (N, C, H, W)
               in [0, 1] -> (N, D)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difftrain.errors import UserError
from difftrain.modalities.base import FeatureExtractor
from difftrain.hashing import sha256_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_HELP = (f"the standard FID Inception-v3 weights ({INCEPTION_FILE}, the file torch-fidelity and torchmetrics use) "
                  "are never downloaded by difftrain: fetch it on a machine with internet from "
                  "https://github.com/toshas/torch-fidelity/releases, then set eval.inception_weights=PATH "
                  "(or pass --inception-weights PATH); or use eval.extractor=domain")


def domain_extractor(ds, epochs: int = 20) -> FeatureExtractor:
    from difftrain.modalities.image_classifier import features, load_or_train_classifier

    model, meta = load_or_train_classifier(ds, epochs=epochs)
    return FeatureExtractor("difftrain-small-classifier", meta["weights_sha256"], lambda x: torch.from_numpy(features(model, x.numpy())),
                            batch_size=512, info={"test_accuracy": meta.get("test_accuracy"), "epochs": epochs})


def inception_extractor(weights: str | Path | None, device: str | torch.device = "cpu") -> FeatureExtractor:
    path = Path(weights) if weights else None
    if path is None or not path.is_file():
        raise UserError(f"Inception weights {'not set' if path is None else f'file {path} not found'}: {INCEPTION_HELP}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError("the Inception-v3 extractor runs torch-fidelity's network: `pip install 'difftrain[inception]'` "
                        "(it needs torchvision); or save the network as TorchScript and pass it as eval.extractor=FILE") from None
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)).to(device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # the network resizes to 299x299 itself, TensorFlow-style
        return net(x.expand(-1, 3, -1, -1).contiguous().to(device))[0]  # grayscale -> RGB

    return FeatureExtractor("inception-v3-fid", sha256_file(path), embed, batch_size=64)


def file_extractor(path: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """A user's network from a file: torch.export (.pt2, with a dynamic batch dimension) or TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature extractor file {path} not found (eval.extractor takes domain, inception or a TorchScript file)")
    exported = path.suffix == ".pt2"
    try:
        module = torch.export.load(str(path)).module().to(device) if exported else torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # noqa: BLE001 - any failure means the file is not what its name says
        raise UserError(f"{path} is not a {'torch.export program' if exported else 'TorchScript module'} "
                        f"({str(e).splitlines()[0][:200]}); save one with "
                        + ("torch.export.save(torch.export.export(model, ...), PATH.pt2)" if exported
                           else "torch.jit.save(torch.jit.script(model), PATH)")) from None

    def embed(x: torch.Tensor) -> torch.Tensor:
        try:
            return module(x.permute(0, 3, 1, 2).float().div(255).to(device))
        except Exception as e:  # noqa: BLE001 - the user's module rejected our input
            raise UserError(f"feature extractor {path} failed on images of shape {tuple(x.shape[1:])} "
                            f"(it receives float (N, C, H, W) in [0, 1]): {str(e).splitlines()[0][:200]}") from None

    return FeatureExtractor(f"{'exported' if exported else 'torchscript'}:{path.name}", sha256_file(path), embed)


def build_extractor(choice: str, ds, *, inception_weights: str | None = None, classifier_epochs: int = 20,
                    device: str | torch.device = "cpu") -> FeatureExtractor:
    """`auto` is Inception when its weights are configured, else the domain classifier."""
    if choice == "auto":
        choice = "inception" if inception_weights else "domain"
    if choice == "domain":
        return domain_extractor(ds, classifier_epochs)
    if choice == "inception":
        return inception_extractor(inception_weights, device)
    return file_extractor(choice, device)
