"""Exit codes, after sysexits(3) (docs/design.md §3): what an MTA or systemd acts on."""

EX_OK = 0
EX_USAGE = 64      # wrong arguments
EX_DATAERR = 65    # bad input data (an empty mail on stdin, a registry rule broken)
EX_NOINPUT = 66    # no such ticket or inbound row
EX_TEMPFAIL = 75   # storage unavailable: try again later (the MTA keeps the mail)
EX_CONFIG = 78     # configuration error, or a database schema older than the code
