"""The output contract of nmbids: what it writes, and what the group level reads.

One file per question a maintainer asks:

* ``names.py``: where is the name of this output decided? Every path nmbids writes (the
  derivatives, the reports and their figures, the logs, the atlas) and the .bidsignore.
* ``tables.py``: which columns does the group level read? The measures and QC tables' columns
  and their JSON data dictionaries.
* ``thresholds.py``: which value raises a QC flag or a report warning?
* ``exits.py``: what does this exit code mean? The codes of both analysis levels and the one
  error type users see.

Everything else imports these; no other module spells a derivative name pattern, a column
list, a threshold or an exit code.
"""
