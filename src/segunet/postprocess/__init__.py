"""From probabilities to labels: instance separation (``instances``), each training
target's decoding (``decoding``) and the search of its settings (``tune``). May import data
and eval; not train or cli."""
