"""segunet's Hydra configs, installed as the package ``segunet.conf`` (``pkg://segunet.conf``).

The YAML groups extend the schemas of :mod:`segunet.config.schema` (``/schema/<group>/<name>`` in
their defaults lists), which importing this package registers in Hydra's ConfigStore.
"""

from segunet.config.compose import register_schemas

register_schemas()
