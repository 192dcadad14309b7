"""bioimage.io model packages, in and out: the one home of the format.

- :mod:`~napari_unet.bioimageio.package` opens a package without trusting it:
  bounded sizes, bounded YAML, local files only, no code unless trusted.
- :mod:`~napari_unet.bioimageio.reading` turns a package into a network returning
  logits (:func:`~napari_unet.bioimageio.reading.read_package`);
  :func:`napari_unet.checkpoint.load_model` calls it for ``.zip`` and ``.yaml`` paths.
- :mod:`~napari_unet.bioimageio.writing` writes a trained model as a package and
  tests it with bioimage.io's own test.

Everything here needs the optional ``export`` extra (``bioimageio.core``, ``onnx``,
``onnxruntime``), imported only when a package is read or written.
"""
