"""Import-only stand-in for ``torchvision`` in the official X-VLA environment.

``import timm`` imports torchvision, and the PyPI torchvision wheels do not load against
torch 2.13.0+cpu; X-VLA only takes ``DropPath`` and ``trunc_normal_`` from timm, so no
torchvision code ever runs. ``setup_official_env.sh`` copies this file to
``site-packages/torchvision/__init__.py`` of the official venv (no dist-info, so transformers
still reports torchvision as unavailable and never takes its torchvision code paths).
Every attribute and submodule resolves to an inert placeholder class.
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+stub"


class _Placeholder(type):
    """A class whose attributes are placeholder classes (``InterpolationMode.BICUBIC`` etc.)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Placeholder(name, (), {})
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Finder())
sys.modules[__name__].__class__ = _StubModule
