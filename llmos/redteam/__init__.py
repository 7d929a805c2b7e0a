"""The security lab (issue 18): attack corpora, probes, detectors and defences, measured."""
