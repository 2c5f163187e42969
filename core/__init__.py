"""The library every room uses: tensor contract, params, atomic files, scoring, golden set, GX."""
