"""`python -m prsm_node` is `prsm-node` (the devnet launcher starts nodes this way)."""

from prsm_node.cli import main

main()
