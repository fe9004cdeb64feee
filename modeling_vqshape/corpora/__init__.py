"""Data: pre-training corpora as `datasets.Dataset` (`data`), GENEActiv files (`geneactiv`) and token tables of whole
recordings (`recordings`). These modules never travel with a saved model."""
