"""`difftrain rate`: human ratings of generated samples in the browser (pairs, real or generated, faithfulness)."""
