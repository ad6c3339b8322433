from midigen.cli import main

raise SystemExit(main())
