from sipbot.cli import main

raise SystemExit(main())
