"""The torch-free core every side imports: the tensor/image codec, pose helpers, manifest hashing and
validation, and the embodiments' facts as data.

``agents/`` (the robot computer), ``runtime/`` (the policy service) and ``export/`` (PyTorch) all depend
on this package and on ``xvla.proto``; it depends on nothing of theirs, so a fact or a check written
here is written once.
"""
