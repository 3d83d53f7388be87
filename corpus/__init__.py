"""The tiny preset's synthetic corpus (synthetic.py, sentences.txt) and the recipes for public corpora (recipes.py)."""
