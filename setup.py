"""Installs the songrec package from lib/ and the `songrec` console script."""

from setuptools import find_packages, setup

setup(
    name="songrec",
    version="0.1.0",
    description="Content-based 'songs like this one' at data-lake scale: Spark, Petastorm, PyTorch DDP, hnswlib",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.11",
    install_requires=[
        "pyspark==4.0.5",
        "petastorm==0.12.1",
        "pyarrow==14.0.2",
        "numpy==1.26.4",
        "pandas==2.3.3",
        "torch==2.13.0",
        "hnswlib==0.8.0",
        "scikit-learn==1.5.2",  # MurmurHash3 of lyric words (songrec.features.bucket_counts)
        "pyyaml>=6",
    ],
    entry_points={"console_scripts": ["songrec=songrec.cli:main"]},
)
