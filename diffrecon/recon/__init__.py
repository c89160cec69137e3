"""The mathematics of diffrecon, in torch; knows nothing of Prefect or file formats."""
