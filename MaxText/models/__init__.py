"""Model families: one small file per decoder block, and a registry from decoder_block name to family."""
