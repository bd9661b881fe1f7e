"""The command layer: what ``esikit``, ``train.py`` and ``test_metadata_loader.py`` run.

Each module parses its arguments, calls the library (data, simulate, train, evaluate,
localization) and prints for people; nothing below this layer imports it.

- :mod:`.check`: the data check (``esikit check``, ``test_metadata_loader.py``)
- :mod:`.train`: build the loaders, train, evaluate (``esikit train``, ``train.py``)
- :mod:`.evaluate`: ``esikit evaluate CHECKPOINT``
- :mod:`.demo`: ``esikit demo`` (``make demo``)
- :mod:`.simulate`: ``esikit simulate``
- :mod:`.forward`: ``esikit forward``
- :mod:`.localize`: ``esikit localize`` and ``esikit noise-bank``
"""
