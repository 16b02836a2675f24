from lrgi_ooc.cli.main import main

raise SystemExit(main())
