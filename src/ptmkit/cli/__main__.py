from ptmkit.cli.main import main

raise SystemExit(main())
