"""The benchmark lab's harness: job configs, data, models, the training loop and result tables.

It sits above the library (``hug_plugins``) and is used only by the scripts in
``integrations/``; it is not part of the installed package. Run the scripts from a checkout,
e.g. ``python integrations/digits.py --preset quick``.
"""
