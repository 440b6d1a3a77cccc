"""Reference points for the load: the naive Kopf operator and the raw API writer (which is the
load client itself, ``--pet-writer client``)."""
